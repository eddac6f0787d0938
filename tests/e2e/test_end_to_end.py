"""End to end: `dvc repro` with tiny params, then `bentoml serve` the champion and classify.

Runs on the real Fashion-MNIST when the machine has it (Debian's dataset-fashion-mnist), on tiny
synthetic MNIST-format files otherwise. Slow: a full DVC run plus a server start.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import contracts
from tests.support import servers, synthetic
from tests.support.project import copy_tree

pytestmark = pytest.mark.slow
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")

TINY_MODELS = {
    "mlp": {
        "model": {"architecture": "mlp", "dense": [64], "dropout": 0.1},
        "fit": {"batch_size": 256, "epochs": 2, "learning_rate": 0.002},
    },
    "cnn": {
        "model": {
            "architecture": "cnn",
            "conv_blocks": [{"filters": 8, "convs": 1, "pool": True}],
            "dense": [32],
        },
        "fit": {"batch_size": 256, "epochs": 1, "learning_rate": 0.002},
    },
}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_project(tmp_path: Path) -> Path:
    """A copy of the project whose params train the tiny variants, on synthetic data when the
    machine has no Fashion-MNIST."""
    project = tmp_path / "project"
    copy_tree(project)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["variants"] = list(TINY_MODELS)
    params["train"]["models"] = TINY_MODELS
    if not SYSTEM_FASHION.is_dir():
        synthetic.write_dataset(tmp_path / "raw", n_train=600, n_test=200)
        params["data"] = {
            "dataset": "synthetic",
            "local_dir": str(tmp_path / "raw"),
            "class_names": list(synthetic.CLASS_NAMES),
        }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_repro_then_serve_the_champion(tmp_path):
    import httpx

    project = tiny_project(tmp_path)
    bin_dir = Path(sys.executable).parent
    environment = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    environment.pop("BENTO_MODEL", None)

    repro = subprocess.run(
        [str(bin_dir / "dvc"), "repro"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert repro.returncode == 0, repro.stdout[-4000:] + repro.stderr[-4000:]
    champion = contracts.Champion.read(project / "models" / "champion.json")
    assert champion.version == 1 and champion.variant in TINY_MODELS
    evaluation = contracts.EvaluateMetrics.read(project / "metrics" / "evaluate.json")
    assert set(evaluation.variants) == set(TINY_MODELS)

    packaged = subprocess.run(
        [sys.executable, "-m", "serving.tools.package"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert packaged.returncode == 0, packaged.stderr[-4000:]
    tag = packaged.stdout.strip().splitlines()[-1]
    assert tag == f"{champion.registered_model}:v1"

    serve_environment = environment | {"BENTO_MODEL": tag}
    with servers.bentoml_serve(
        serve_environment, log=tmp_path / "serve.log", cwd=project
    ) as server:
        server.wait_ready("/readyz", timeout=120)
        base = server.url
        with np.load(project / "data" / "prepared" / "test.npz") as test:
            images, labels = test["x"][:20], test["labels"][:20]
            class_names = [str(name) for name in test["class_names"]]
        correct = 0
        for image, label in zip(images, labels, strict=True):
            response = httpx.post(
                f"{base}/predict_image",
                files={"image": ("test.png", png_bytes(image), "image/png")},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["class_name"] == class_names[answer["label"]]
            assert answer["model_version"] == "1"
            assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            correct += answer["label"] == label
        # A model trained for an epoch or two is far better than chance (10%) on these.
        assert correct >= 10, f"only {correct}/20 test images classified correctly"
