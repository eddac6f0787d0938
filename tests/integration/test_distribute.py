"""`fit.distribute: mirrored`: the train stage on 2 logical CPU devices under MirroredStrategy
makes the same kind of model file as a single-device fit, which loads and predicts with Keras,
exports to ONNX as `evaluate` exports it, and answers through the service's runtime.

The stage runs in a subprocess: logical devices must be set before TensorFlow starts its
runtime, which this test process may already have done.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import config
from pipeline.model import onnx_export
from pipeline.stages import train
from serving.model import ServedModel
from tests.support.workspace import TINY_VARIANTS, Workspace

pytestmark = pytest.mark.slow


def test_mirrored_fit_on_two_logical_cpus_saves_a_model_that_loads_and_serves(
    workspace: Workspace, prepared: Path, sqlite_store: str, tmp_path: Path
):
    import keras
    import mlflow

    models = copy.deepcopy(TINY_VARIANTS)
    models["cnn"]["fit"] |= {"distribute": "mirrored", "logical_cpu_devices": 2, "epochs": 2}
    params = {"train": {"variants": ["cnn"], "models": models}}
    (workspace.root / "params.yaml").write_text(yaml.safe_dump(params))
    out = workspace.root / "models" / "cnn"
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.train",
        "--params=params.yaml",
        "--variant=cnn",
    ]
    command += [f"--data={prepared}", f"--out={out}", "--metrics=m.json", "--plots=p.csv"]
    result = subprocess.run(
        command,
        cwd=workspace.root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mirrored over 2 devices" in result.stderr
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(sqlite_store).get_run(run_id).data.params
    assert (logged["distribute"], logged["replicas"]) == ("mirrored", "2")

    model = keras.saving.load_model(out / "model.keras")
    x_val, y_val, _ = train.load_split(prepared / "val.npz")
    probabilities = np.asarray(model.predict(x_val, verbose=0))
    assert probabilities.shape == y_val.shape
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    # It learnt: better than chance on the synthetic task's validation split.
    accuracy = float(np.mean(probabilities.argmax(1) == y_val.argmax(1)))
    assert accuracy > 0.2, accuracy
    # A plain Keras model: no layer of this package, no distribution strategy in the file.
    assert all(type(layer).__module__.startswith("keras") for layer in model.layers)

    # Served as any champion is: its ONNX export, checked against Keras on validation, run by
    # the service's onnxruntime session, gives the same classes.
    onnx_export.export_checked(model, tmp_path, x_val)
    served = ServedModel.load(
        tmp_path / onnx_export.FP32_FILE,
        info={"class_names": [str(index) for index in range(y_val.shape[1])]},
        version="1",
        threads=1,
    )
    answers = served.classify(x_val)
    assert [answer["label"] for answer in answers] == probabilities.argmax(1).tolist()


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        ({"distribute": "everywhere"}, "train.models.cnn.fit.distribute"),
        ({"logical_cpu_devices": 1}, "fit.logical_cpu_devices"),
    ],
)
def test_bad_distribute_settings_name_the_key(tmp_path: Path, fit: dict, message: str):
    models = copy.deepcopy(TINY_VARIANTS)
    models["cnn"]["fit"] |= fit
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"variants": ["cnn"], "models": models}}))
    with pytest.raises(config.ConfigError, match=message.replace(".", r"\.")):
        config.load(path)
