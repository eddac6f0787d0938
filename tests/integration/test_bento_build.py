"""`bentoml build` packs the service with the model `BENTO_MODEL` names, and the built bento serves
that model when started with no `BENTO_MODEL` at all, as a container started without it would."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.support import bento, servers, shapes

pytestmark = pytest.mark.slow

# Not the default dataset's name, so `fashion-mnist-classifier:latest` cannot find it by luck.
TAG = "digits-classifier:v7"


def build(tmp_path, home) -> str:
    """`bentoml build` of this repository into `home`'s store; the new bento's tag."""
    bentofile = yaml.safe_load((servers.REPO_ROOT / "bentofile.yaml").read_text())
    # Locking resolves every requirement against an index (network); the tag does not need it.
    bentofile["python"]["lock_packages"] = False
    path = tmp_path / "bentofile.yaml"
    path.write_text(yaml.safe_dump(bentofile))
    environment = os.environ | {"BENTOML_HOME": str(home), "BENTO_MODEL": TAG}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(path), "-o", "tag", "."],
        cwd=servers.REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [tag] = [line.split("__tag__:")[1] for line in result.stdout.splitlines() if "__tag__:" in line]
    return tag.strip()


def test_a_built_bento_serves_the_model_it_packs_with_no_bento_model(tmp_path) -> None:
    home = tmp_path / "bentoml"
    with bento.bentoml_home(home):
        bento.store_model(
            shapes.tiny_model(len(shapes.SHAPES)), TAG, class_names=shapes.SHAPES, version="7"
        )
    bento_tag = build(tmp_path, home)
    assert bento_tag.startswith("classifier:")

    environment = {k: v for k, v in os.environ.items() if k != "BENTO_MODEL"}
    environment |= {"BENTOML_HOME": str(home), "SERVING_WORKERS": "1"}
    port = servers.free_port()
    # Started away from the checkout, so only the bento's own copy of the code can answer.
    with servers.running(
        "bentoml serve (bento)",
        servers.bentoml_command(port, service=bento_tag),
        port=port,
        log=tmp_path / "serve.log",
        env=environment,
        cwd=tmp_path,
    ) as server:
        server.wait_ready("/readyz", timeout=180)
        metadata = httpx.post(f"{server.url}/metadata", json={}, timeout=30).json()
    assert metadata["bento_model"] == TAG
    assert (metadata["registered_model"], metadata["version"]) == ("digits-classifier", "7")
