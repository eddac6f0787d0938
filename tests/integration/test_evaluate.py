"""Stage `evaluate`: the whole stage, and scoring the registry's champion on this test set.

The stage itself runs the way DVC would run it: train and evaluate with the command lines that
dvc.yaml declares, then every declared output must exist.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest
import yaml

from pipeline import contracts, tracking
from pipeline.champion import handoff, registry, scoring
from pipeline.model import calibration, onnx_export
from pipeline.stages import evaluate, train
from tests.support import store_peek, synthetic
from tests.support.registry import NAME, Registry
from tests.support.workspace import DATASET, Workspace, write_params

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = REPO / "dvc.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def test_champion_accuracy_is_measured_on_the_given_test_set(model_registry: Registry):
    images, labels = synthetic.make_split(20, seed=5)
    x_test = images.astype(np.float32) / 255
    assert handoff.champion_accuracy_on(model_registry.client, NAME, x_test, labels) is None
    model_registry.register(model_registry.new_run(), accuracy=0.8, champion_accuracy=None)
    expected = scoring.score(np.asarray(model_registry.model(x_test)), labels).accuracy
    accuracy = handoff.champion_accuracy_on(model_registry.client, NAME, x_test, labels)
    assert accuracy == pytest.approx(expected)
    # Labels the champion has no output for: it is not comparable, so no accuracy.
    assert handoff.champion_accuracy_on(model_registry.client, NAME, x_test, labels + 10) is None


def declared_paths(stage: dict) -> list[str]:
    """Every path a dvc.yaml stage declares in outs, metrics and plots."""
    paths = []
    for section in ("outs", "metrics", "plots"):
        for entry in stage.get(section, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def stage_argv(command: str, module: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", module]
    return words[3:]


def run_stages(root: Path, variants: tuple[str, ...]) -> list[str]:
    """train@<variant> and evaluate with dvc.yaml's command lines, in `root`; evaluate's argv.

    Every output each stage declares must exist afterwards.
    """
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    for variant in variants:
        command = stages["train"]["do"]["cmd"].replace("${item}", variant)
        train.main(stage_argv(command, "pipeline.stages.train"))
        for path in declared_paths(stages["train"]["do"]):
            assert (root / path.replace("${item}", variant)).exists(), path
    evaluate_argv = stage_argv(stages["evaluate"]["cmd"], "pipeline.stages.evaluate")
    evaluate.main(evaluate_argv)
    for path in declared_paths(stages["evaluate"]):
        assert (root / path).exists(), path
    return evaluate_argv


def assert_results_went_to_the_training_runs(
    client, root: Path, results: contracts.EvaluateMetrics, runs: dict[str, contracts.TrainedRun]
) -> None:
    for variant, metrics in results.variants.items():
        assert 0.5 <= metrics.test_accuracy <= 1.0
        # model.keras is the model train validated: the same validation results.
        trained = contracts.TrainMetrics.read(root / "metrics" / "train" / f"{variant}.json")
        assert metrics.val_accuracy == pytest.approx(trained.final_val_accuracy)
        assert metrics.val_loss == pytest.approx(trained.final_val_loss, rel=1e-3)
        # Test results and the evaluation report go to the variant's training run.
        run = client.get_run(runs[variant].run_id)
        for key in ("test_accuracy", "test_loss", "test_macro_f1"):
            assert run.data.metrics[key] == pytest.approx(getattr(metrics, key))
        assert {f"test_f1_{label}" for label in synthetic.CLASS_NAMES} <= set(run.data.metrics)
        # Only test results are added: the training history stays one value per epoch.
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
        reports = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert reports == {
            f"evaluation/{file_name}"
            for file_name in (
                "classification_report.json",
                "classification_report.txt",
                "confusion_matrix.png",
                "misclassified.png",
                "reliability.png",
            )
        }
        # The temperature fitted on validation and the test ECE before and after it.
        for key in ("temperature", "test_ece", "test_ece_calibrated", "test_loss_calibrated"):
            assert run.data.metrics[key] == pytest.approx(getattr(metrics, key))
        assert run.info.status == "FINISHED"


def assert_registered_with_tags(
    version, *, chosen: str, run: contracts.TrainedRun, meta, metrics, commit: str
) -> None:
    assert str(version.version) == "1" and version.run_id == run.run_id
    # The registered model is the calibrated one, logged to the same training run.
    assert version.source != run.model_uri
    tags = registry.VersionTags.from_tags(version.tags)
    assert tags.variant == chosen
    assert tags.dataset == DATASET
    assert tags.data_sha256 == meta.content_sha256
    assert tags.git_commit == commit
    assert tags.run_id == run.run_id
    assert tags.class_names == synthetic.CLASS_NAMES
    assert tags.input_contract == handoff.INPUT_CONTRACT
    assert tags.selected_by == "val_accuracy"
    assert tags.metrics == pytest.approx(dataclasses.asdict(metrics), abs=1e-6)
    assert f"Variant `{chosen}`" in version.description


def test_evaluate_stage_registers_the_best_variant_and_writes_its_reports(
    workspace: Workspace, prepared: Path, tracking_store: str
):
    root = workspace.root
    (root / "data").mkdir()
    (root / "data" / "prepared").symlink_to(prepared)
    name = f"tiny-{uuid.uuid4().hex[:8]}"  # the server's registry is shared by the session
    write_params(root / "params.yaml", evaluate={"registered_model": name})
    variants = ("mlp", "cnn")
    evaluate_argv = run_stages(root, variants)

    client = mlflow.MlflowClient(tracking_store)
    meta = contracts.PreparedMeta.read(prepared / "meta.json")
    runs = {v: contracts.TrainedRun.read(root / "models" / v / "run.json") for v in variants}
    results = contracts.EvaluateMetrics.read(root / "metrics" / "evaluate.json")
    assert set(results.variants) == set(variants)
    assert_results_went_to_the_training_runs(client, root, results, runs)

    chosen = scoring.select_best(results.variants, select_by="val_accuracy")
    best = results.variants[chosen]
    assert results.chosen == contracts.Chosen(
        variant=chosen, version=1, promoted=True, **dataclasses.asdict(best)
    )
    champion = contracts.Champion.read(root / "models" / "champion.json")
    assert champion == contracts.Champion(
        registered_model=name,
        version=1,
        model_uri=f"models:/{name}/1",
        alias_uri=f"models:/{name}@champion",
        variant=chosen,
        run_id=runs[chosen].run_id,
        class_names=synthetic.CLASS_NAMES,
        metrics=pytest.approx(dataclasses.asdict(best), abs=1e-6),
        tracking_uri=tracking_store,
        candidate=contracts.Candidate(
            variant=chosen, version=1, promoted=True, reason="first version: no champion yet"
        ),
    )

    # The DVC plots are the chosen variant's.
    records = json.loads((root / "plots" / "evaluate" / "confusion.json").read_text())
    assert len(records) == meta.counts["test"]
    assert {record["actual"] for record in records} == set(synthetic.CLASS_NAMES)
    correct = sum(record["actual"] == record["predicted"] for record in records)
    assert correct / len(records) == pytest.approx(best.test_accuracy)
    for file_name in ("confusion_matrix.png", "misclassified.png", "reliability.png"):
        assert (root / "plots" / "evaluate" / file_name).read_bytes()[:8] == PNG

    assert_registered_with_tags(
        client.get_model_version_by_alias(name, "champion"),
        chosen=chosen,
        run=runs[chosen],
        meta=meta,
        metrics=best,
        commit=workspace.commit,
    )
    with np.load(prepared / "test.npz") as data:
        x_test = data["x"]
    # The registry serves model.keras's probabilities at the fitted temperature: the same class,
    # softmax(log p / T) for the probabilities, as serving loads it (a plain Keras file).
    served = np.asarray(mlflow.keras.load_model(champion.alias_uri)(x_test))
    local = np.asarray(keras.saving.load_model(root / "models" / chosen / "model.keras")(x_test))
    expected = calibration.softmax(np.log(np.clip(local, 1e-30, 1)), best.temperature)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    np.testing.assert_array_equal(served.argmax(axis=1), local.argmax(axis=1))
    assert champion.metrics["temperature"] == pytest.approx(best.temperature, abs=1e-6)
    assert_registered_onnx(client, client.get_model_version(name, "1"), prepared, served)

    # Evaluating the same models again registers nothing new.
    evaluate.main(evaluate_argv)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    again = contracts.Champion.read(root / "models" / "champion.json")
    assert again.version == 1
    assert again.candidate.reason == "already the champion"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def assert_registered_onnx(client, version, prepared: Path, keras_test: np.ndarray) -> None:
    """The version's logged model holds both ONNX files, as its sha256 tags say; the float32 one
    answers as the registered Keras model, and the served one scores what its tag says."""
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(version.name, version.version),
            tracking_uri=client.tracking_uri,
        )
    )
    files = {path.name: path for path in local.rglob("*.onnx")}
    assert set(files) == {onnx_export.FP32_FILE, onnx_export.INT8_FILE}
    tags = version.tags
    assert onnx_export.sha256(files["model.onnx"]) == tags["onnx_fp32_sha256"]
    assert onnx_export.sha256(files["model.int8.onnx"]) == tags["onnx_int8_sha256"]
    assert onnx_export.sha256(files[tags["onnx_file"]]) == tags["onnx_sha256"]
    assert (
        tags["onnx_served"] in ("fp32", "int8")
        and "validation accuracy" in tags["onnx_int8_decision"]
    )
    with np.load(prepared / "test.npz") as data:
        x_test, labels = data["x"], data["labels"]
    fp32 = onnx_export.onnx_probabilities(files["model.onnx"], x_test)
    np.testing.assert_allclose(fp32, keras_test, atol=onnx_export.TOLERANCE)
    served = onnx_export.onnx_probabilities(files[tags["onnx_file"]], x_test)
    accuracy = float((served.argmax(axis=1) == labels).mean())
    assert float(tags["onnx_served_test_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    # What the served file costs here, for the gate's budget (evaluate.budget).
    served_file = files[tags["onnx_file"]]
    assert float(tags["served_file_mib"]) == pytest.approx(served_file.stat().st_size / 2**20, 1e-3)
    assert 0 < float(tags["served_latency_ms"]) < 1000
    assert float(tags["served_session_mib"]) >= 0
    # The probe a following service checks a candidate with: the served file's own answers.
    [probe] = local.rglob(onnx_export.PROBE_FILE)
    assert onnx_export.sha256(probe) == tags["onnx_probe_sha256"]
    with np.load(probe) as recorded:
        assert recorded["images"].shape == (onnx_export.PROBE_IMAGES, 28, 28)
        answers = onnx_export.onnx_probabilities(files[tags["onnx_file"]], recorded["images"])
        np.testing.assert_allclose(recorded["probabilities"], answers, atol=1e-6)


def trained_mlp(root: Path, prepared: Path) -> dict:
    """`root` after train@mlp with dvc.yaml's command line, on `prepared`; dvc.yaml's stages."""
    (root / "data").mkdir()
    (root / "data" / "prepared").symlink_to(prepared)
    write_params(root / "params.yaml", variants=("mlp",))
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    train.main(
        stage_argv(stages["train"]["do"]["cmd"].replace("${item}", "mlp"), "pipeline.stages.train")
    )
    return stages


def test_evaluate_refuses_a_run_json_that_breaks_its_contract(
    workspace: Workspace, prepared: Path, sqlite_store: str
):
    root = workspace.root
    stages = trained_mlp(root, prepared)
    run_json = root / "models" / "mlp" / "run.json"
    data = json.loads(run_json.read_text())
    data["runid"] = data.pop("run_id")  # a key renamed in one stage and not the other
    run_json.write_text(json.dumps(data))
    with pytest.raises(contracts.ContractError, match=r"run\.json: unknown key\(s\) \['runid'\]"):
        evaluate.main(stage_argv(stages["evaluate"]["cmd"], "pipeline.stages.evaluate"))
    assert not (root / "models" / "champion.json").exists()


def test_champion_this_stage_already_scored_is_not_scored_again(model_registry: Registry):
    images, labels = synthetic.make_split(20, seed=5)
    x_test = images.astype(np.float32) / 255
    run = model_registry.new_run()
    model_registry.register(run, accuracy=0.8, champion_accuracy=None)
    run_id = run[0]
    # The figure this stage measured for the champion's own run is used as it is.
    scored = {run_id: 0.125, "some-other-run": 0.5}
    assert handoff.champion_accuracy_on(
        model_registry.client, NAME, x_test, labels, scored=scored
    ) == (0.125)
    # A champion from a run this stage did not score is loaded and measured.
    expected = scoring.score(np.asarray(model_registry.model(x_test)), labels).accuracy
    other = {"some-other-run": 0.5}
    assert handoff.champion_accuracy_on(
        model_registry.client, NAME, x_test, labels, scored=other
    ) == pytest.approx(expected)


def finished_run() -> str:
    """A training run that has ended, as `train` leaves it; its id."""
    with mlflow.start_run() as run:
        mlflow.log_metric("val_accuracy", 0.5)
    return run.info.run_id


def test_logging_the_calibrated_model_keeps_the_training_runs_status_and_end(sqlite_store: str):
    """The run is resumed to log the model, then given back its status and end time: the MLflow
    UI keeps showing when training ended, and a failure while logging leaves it FINISHED."""
    client = mlflow.MlflowClient()
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    run_id = finished_run()
    before = client.get_run(run_id).info
    time.sleep(0.05)
    uri = tracking.log_calibrated_model(run_id, model, example=np.zeros((2, 28, 28), np.float32))
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert mlflow.keras.load_model(uri)(np.zeros((1, 28, 28), np.float32)).shape == (1, 10)

    wrong_shape = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError):
        tracking.log_calibrated_model(run_id, model, example=wrong_shape)
    failed = client.get_run(run_id).info
    assert (failed.status, failed.end_time) == ("FINISHED", before.end_time)


@pytest.mark.slow
def test_a_stop_while_the_calibrated_model_is_logged_leaves_the_run_finished(
    workspace: Workspace, prepared: Path, sqlite_store: str
):
    """SIGTERM (a CI timeout) to a real evaluate process while it has the chosen training run
    resumed: the logging finishes, the run gets its status and end time back, and the stage
    registers and writes nothing and exits 128 + 15."""
    root = workspace.root
    stages = trained_mlp(root, prepared)
    run_id = contracts.TrainedRun.read(root / "models" / "mlp" / "run.json").run_id
    client = mlflow.MlflowClient(sqlite_store)
    before = client.get_run(run_id).info
    command = [sys.executable, "-m", "pipeline.stages.evaluate"]
    command += stage_argv(stages["evaluate"]["cmd"], "pipeline.stages.evaluate")
    environment = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": sqlite_store}
    process = subprocess.Popen(
        command, cwd=root, env=environment, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_resumed(sqlite_store, run_id, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert client.search_registered_models() == []
    for output in ("models/champion.json", "metrics/evaluate.json", "plots/evaluate"):
        assert not (root / output).exists(), output


def wait_until_resumed(
    tracking_uri: str, run_id: str, process: subprocess.Popen, *, timeout: float = 120
):
    """Return once the finished run `run_id` is RUNNING again (evaluate logging into it)."""
    query = "SELECT status FROM runs WHERE run_uuid = ?"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            "evaluate ended before resuming the run:\n" + (process.stderr.read()[-2000:])
        )
        if store_peek.first_row(tracking_uri, query, run_id) == ("RUNNING",):
            return
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} was not resumed within {timeout} s")
