"""The drift report on what a real service answered: Fashion-MNIST test images through the
Fashion model are no drift; handwritten digits through it are, by class mix and input
statistics; a handful of predictions is not enough data. `python -m serving.tools.monitor` runs as a
user runs it, against the reference of the served model on the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.tools import monitor
from tests.support import servers, shapes
from tests.support.client import image_file, oip_binary, oip_probabilities
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.slow

INPUT_STATISTICS = ("mean_intensity", "ink_fraction", "box_height", "box_width")


def serve(url: str, images: np.ndarray) -> list[int]:
    """Send uint8 (N, 28, 28) images through every kind of endpoint, a third each: PNG uploads to
    /predict_images, pixels to /predict, OIP binary tensors; the predicted labels in order."""
    labels: list[int] = []
    thirds = np.array_split(np.arange(len(images)), 3)
    with httpx.Client(base_url=url, timeout=60) as http:
        for start in range(0, len(thirds[0]), 10):
            chunk = images[thirds[0][start : start + 10]]
            files = [
                ("images", image_file(shapes.encode(Image.fromarray(i), "PNG"))) for i in chunk
            ]
            reply = http.post("/predict_images", files=files)
            assert reply.status_code == 200, reply.text
            labels += [answer["label"] for answer in reply.json()]
        reply = http.post("/predict", json={"pixels": images[thirds[1]].tolist()})
        assert reply.status_code == 200, reply.text
        labels += [answer["label"] for answer in reply.json()]
        reply = http.post(
            "/v2/models/fashion-mnist-classifier/infer", **oip_binary(images[thirds[2]])
        )
        labels += oip_probabilities(reply).argmax(axis=1).tolist()
    return labels


def drift_report(store, monitor_dir: Path, out: Path, since: datetime, expected: int):
    """Wait until the watch has written `expected` rows since `since`, then run the report."""
    deadline = time.monotonic() + 20
    while True:
        served = monitor.read_log(
            monitor_dir,
            model_name="fashion-mnist-classifier",
            model_version="1",
            classes=len(store.class_names),
            since=since,
        )
        if len(served.predictions) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(served.predictions) == expected
    command = [
        sys.executable,
        *("-m", "serving.tools.monitor", "--log", str(monitor_dir), "--out", str(out)),
        *("--model", store.tag, "--test-data", str(store.test_npz)),
        *("--since", since.isoformat()),
    ]
    environment = dict(os.environ) | {"BENTOML_HOME": str(store.home)}
    environment["PATH"] = f"{servers.BIN_DIR}{os.pathsep}{environment.get('PATH', '')}"
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout, json.loads((out / "drift.json").read_text())


def assert_picture(path: Path) -> None:
    with Image.open(path) as picture:
        assert picture.format == "PNG" and min(picture.size) > 400


def test_fashion_test_images_are_no_drift(
    fashion_served, fashion_store, fashion_monitor_dir: Path, tmp_path: Path
) -> None:
    since = datetime.now()
    images = fashion_store.test_images[1000:1300]
    labels = serve(fashion_served.url, images)
    out, result = drift_report(fashion_store, fashion_monitor_dir, tmp_path, since, 300)
    assert result["drift"] is False, result["summary"]
    assert result["predictions"] == 300 and result["reference_images"] == 10000
    assert set(result["checks"]) == {"class_mix", "confidence", *INPUT_STATISTICS}
    assert not any(check["drift"] for check in result["checks"].values())
    served_mix = result["checks"]["class_mix"]["served"]
    counts = np.bincount(labels, minlength=10) / len(labels)
    np.testing.assert_allclose(list(served_mix.values()), counts, atol=1e-4)
    assert out.splitlines()[0].startswith("no drift in 300 predictions of fashion-mnist-classifier")
    assert_picture(tmp_path / "drift.png")


def digits(count: int) -> np.ndarray:
    """scikit-learn's 8x8 handwritten digits (0-16) as uint8 28x28: 3x larger, 2 pixels border."""
    from sklearn.datasets import load_digits

    small = load_digits().images[:count]
    large = np.kron(small * (255 / 16), np.ones((3, 3)))
    return np.pad(np.rint(large), ((0, 0), (2, 2), (2, 2))).astype(np.uint8)


def test_handwritten_digits_are_drift_in_class_mix_and_inputs(
    fashion_served, fashion_store, fashion_monitor_dir: Path, tmp_path: Path
) -> None:
    since = datetime.now()
    serve(fashion_served.url, digits(300))
    out, result = drift_report(fashion_store, fashion_monitor_dir, tmp_path, since, 300)
    assert result["drift"] is True
    checks: dict[str, Any] = result["checks"]
    drifted = [name for name, check in checks.items() if check["drift"]]
    assert "class_mix" in drifted and set(INPUT_STATISTICS) <= set(drifted), drifted
    line = out.splitlines()[0]
    assert line.startswith("drift in 300 predictions of fashion-mnist-classifier v1: class_mix")
    for name in INPUT_STATISTICS:
        assert f"{name} (ks p=" in line
    assert_picture(tmp_path / "drift.png")


def test_a_few_predictions_are_not_enough_data(
    fashion_served, fashion_store, fashion_monitor_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "drift.png").write_bytes(b"an old report")
    since = datetime.now()
    serve(fashion_served.url, fashion_store.test_images[:30])
    out, result = drift_report(fashion_store, fashion_monitor_dir, tmp_path, since, 30)
    assert result["drift"] is None and result["status"] == "not enough data"
    assert result["predictions"] == 30 and result["checks"] == {}
    assert out.startswith("not enough data: 30 predictions of fashion-mnist-classifier v1")
    assert not (tmp_path / "drift.png").exists()
