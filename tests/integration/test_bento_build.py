"""`bentoml build` packs the service with the model `BENTO_MODEL` names, and the built bento serves
that model when started with no `BENTO_MODEL` at all, as a container started without it would,
from a fresh virtual environment holding only the bento's own requirements: no TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline import environment
from tests.support import bento, servers, shapes
from tests.support.client import drawing_bytes, image_file

pytestmark = pytest.mark.slow

# Not the default dataset's name, so `fashion-mnist-classifier:latest` cannot find it by luck.
TAG = "digits-classifier:v7"


def build(tmp_path, home) -> str:
    """`bentoml build` of this repository into `home`'s store; the new bento's tag."""
    # The bentofile's requirements are requirements/serve.txt, locked already: building needs no
    # index.
    variables = os.environ | {"BENTOML_HOME": str(home), "BENTO_MODEL": TAG}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", "-o", "tag", "."],
        cwd=servers.REPO_ROOT,
        env=variables,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [tag] = [line.split("__tag__:")[1] for line in result.stdout.splitlines() if "__tag__:" in line]
    return tag.strip()


def pins(text: str) -> set[tuple[str, str, frozenset[str]]]:
    """(name, version, hashes) of each pin of a requirements file."""
    return {(pin.name, pin.version, frozenset(pin.hashes)) for pin in environment.read_pins(text)}


def bento_environment(bento_folder: Path, venv: Path) -> Path:
    """A new virtual environment at `venv` with the bento's requirements installed (by uv, from
    its cache where it can); its python."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is needed (make install puts it in the project's venv)"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    requirements = bento_folder / "env" / "python" / "requirements.txt"
    started = time.perf_counter()
    result = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"installed the bento's requirements in {time.perf_counter() - started:.1f} s")
    return python


def test_a_built_bento_serves_the_model_it_packs_from_an_environment_without_tensorflow(
    tmp_path,
) -> None:
    home = tmp_path / "bentoml"
    with bento.bentoml_home(home):
        bento.store_model(shapes.shape_model(), TAG, class_names=shapes.SHAPES, version="7")
    bento_tag = build(tmp_path, home)
    assert bento_tag.startswith("classifier:")
    name, version = bento_tag.split(":")
    bento_folder = home / "bentos" / name / version
    requirements = (bento_folder / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "tensorflow" not in requirements
    # The lock's pins, hashes and all (the fresh environment below is installed from them).
    locked = (servers.REPO_ROOT / "requirements" / "serve.txt").read_text()
    assert pins(locked) <= pins(requirements)

    python = bento_environment(bento_folder, tmp_path / "venv")
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "list", "--format=freeze"],
        capture_output=True,
        text=True,
    )
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "bentoml" in installed and "onnxruntime" in installed, listed.stdout + listed.stderr
    assert not {n for n in installed if n.startswith(("tensorflow", "keras", "mlflow"))}

    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("BENTO_MODEL", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environment |= {"BENTOML_HOME": str(home), "SERVING_WORKERS": "1"}
    environment["PATH"] = f"{python.parent}{os.pathsep}{environment.get('PATH', '')}"
    port = servers.free_port()
    command = [str(python), "-m", "bentoml", "serve", bento_tag]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    # Started away from the checkout, so only the bento's own copy of the code can answer.
    with servers.running(
        "bentoml serve (bento)",
        command,
        port=port,
        log=tmp_path / "serve.log",
        env=environment,
        cwd=tmp_path,
    ) as server:
        server.wait_ready("/readyz", timeout=180)
        metadata = httpx.post(f"{server.url}/metadata", json={}, timeout=30).json()
        upload = {"image": image_file(drawing_bytes(1))}
        answer = httpx.post(f"{server.url}/predict_image", files=upload, timeout=30)
    assert metadata["bento_model"] == TAG
    assert (metadata["registered_model"], metadata["version"]) == ("digits-classifier", "7")
    assert metadata["runtime"]["name"] == "onnxruntime"
    assert answer.status_code == 200, answer.text
    assert answer.json()["class_name"] == shapes.SHAPES[1]
