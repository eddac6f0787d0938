"""Stage `train` end to end on tiny prepared data: MLflow run, logged model, DVC outputs.

Runs against a SQLite store and (slow) against a real `mlflow server` over HTTP.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest

from pipeline import io, train
from tests.conftest import DATASET, Workspace, write_params

PNG = b"\x89PNG\r\n\x1a\n"


def run_train(workspace: Workspace, prepared: Path, variant: str = "mlp") -> dict[str, Path]:
    """`python -m pipeline.train` with the paths dvc.yaml gives it, inside the workspace."""
    paths = {
        "params": write_params(workspace.root / "params.yaml"),
        "out": workspace.root / "models" / variant,
        "metrics": workspace.root / "metrics" / "train" / f"{variant}.json",
        "plots": workspace.root / "plots" / "train" / f"{variant}.csv",
    }
    train.main(
        [
            f"--params={paths['params']}",
            f"--variant={variant}",
            f"--data={prepared}",
            f"--out={paths['out']}",
            f"--metrics={paths['metrics']}",
            f"--plots={paths['plots']}",
        ]
    )
    return paths


def test_train_tracks_one_run_and_writes_the_stage_outputs(
    workspace: Workspace, prepared: Path, tracking_store: str
):
    client = mlflow.MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name(DATASET)
    # The server is shared by the session; count only what this run adds.
    runs_before = len(client.search_runs([experiment.experiment_id])) if experiment else 0

    paths = run_train(workspace, prepared)

    experiment = client.get_experiment_by_name(DATASET)
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == runs_before + 1
    run_json = json.loads((paths["out"] / "run.json").read_text())
    run = client.get_run(run_json["run_id"])
    assert run.info.experiment_id == experiment.experiment_id == run_json["experiment_id"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp"
    assert run_json["tracking_uri"] == tracking_store

    # Params: the variant's config, flattened, and the data it was trained on.
    meta = json.loads((prepared / "meta.json").read_text())
    params = run.data.params
    assert params["variant"] == "mlp"
    assert params["model.architecture"] == "mlp"
    assert params["model.dense"] == "(32,)"
    assert params["model.batch_norm"] == "True"
    assert params["fit.batch_size"] == "32"
    assert params["fit.schedule"] == "cosine"
    assert params["fit.epochs"] == "3"
    assert params["data.dataset"] == DATASET
    assert params["data.content_sha256"] == io.digest(meta["sha256"])
    assert json.loads(params["data.sha256"]) == meta["sha256"]
    assert (params["train_size"], params["val_size"]) == ("160", "40")

    # Tags tie the run to the commit it ran at and to its DVC stage.
    assert run.data.tags["git_commit"] == workspace.commit
    assert run.data.tags["git_dirty"] == "false"
    assert run.data.tags["dvc_stage"] == "train@mlp"

    # Exactly one value per epoch for each history metric, equal to the CSV for dvc plots.
    with paths["plots"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for key in train.HISTORY_KEYS:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [metric.step for metric in history] == [0, 1, 2], key
        assert [metric.value for metric in history] == pytest.approx(
            [float(row[key]) for row in rows], rel=1e-5
        ), key
    # Cosine schedule with one warm-up epoch of 5 steps, then decay over the last 10 steps:
    # the rate at the end of each epoch is the warm-up target, half of it, then zero.
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx(
        [0.01, 0.005, 0.0], abs=1e-6
    )
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert all(float(row["epoch_seconds"]) > 0 for row in rows)

    # Summary metrics: the same in MLflow and in the DVC metrics file.
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["epochs_run"] == 3
    assert metrics["best_val_accuracy"] == pytest.approx(
        max(float(row["val_accuracy"]) for row in rows), rel=1e-5
    )
    assert metrics["final_val_accuracy"] >= 0.8
    for key in ("final_val_loss", "final_val_accuracy", "epochs_run"):
        assert run.data.metrics[key] == pytest.approx(metrics[key])
    assert metrics == run_json["metrics"] | {"best_val_accuracy": metrics["best_val_accuracy"]}

    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"model_summary.txt", "training_curves.png"} <= artifacts
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    summary = (folder / "model_summary.txt").read_text()
    assert "Total params" in summary and "probabilities" in summary
    assert (folder / "training_curves.png").read_bytes()[:8] == PNG

    # The logged model and model.keras are the same trained model.
    with np.load(prepared / "val.npz") as data:
        x_val = data["x"]
    logged = mlflow.keras.load_model(run_json["model_uri"])
    local = keras.saving.load_model(paths["out"] / "model.keras")
    logged_probabilities = np.asarray(logged(x_val))
    assert logged_probabilities.shape == (len(x_val), 10)
    np.testing.assert_allclose(logged_probabilities, np.asarray(local(x_val)), atol=1e-6)
    assert params["model.parameters"] == str(local.count_params())
    assert not list(paths["out"].glob(".*"))


def test_unknown_variant_is_refused(workspace: Workspace, prepared: Path):
    write_params(workspace.root / "params.yaml")
    with pytest.raises(SystemExit, match=r"'resnet' is not defined in train\.models"):
        train.main(["--params=params.yaml", "--variant=resnet", f"--data={prepared}"])
    assert not (workspace.root / "models").exists()
