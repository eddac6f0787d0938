"""Stage `train`: fitting on the learnable synthetic task, and the whole stage on tiny prepared
data (MLflow run, logged model, DVC outputs).

The stage runs against a SQLite store and (slow) against a real `mlflow server` over HTTP.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest

from pipeline import config, contracts, environment, io
from pipeline.config import ConvBlockConfig, FitConfig, ModelConfig, VariantConfig
from pipeline.model import architectures, devices, fitting
from pipeline.stages import prepare, train
from tests.support import synthetic
from tests.support.workspace import DATASET, TINY_VARIANTS, Workspace, git, write_params

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def run_train(workspace: Workspace, prepared: Path, variant: str = "mlp") -> dict[str, Path]:
    """`python -m pipeline.stages.train` with the paths dvc.yaml gives it, inside the workspace."""
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


def assert_params_describe_variant_and_data(params: dict[str, str], meta) -> None:
    """The run's params: the variant's config, flattened, and the data it was trained on."""
    assert params["variant"] == "mlp"
    assert params["model.architecture"] == "mlp"
    assert params["model.dense"] == "(32,)"
    assert params["model.batch_norm"] == "True"
    assert params["fit.batch_size"] == "32"
    assert params["fit.schedule"] == "cosine"
    assert params["fit.epochs"] == "3"
    assert params["data.dataset"] == DATASET
    assert params["data.content_sha256"] == meta.content_sha256
    assert json.loads(params["data.sha256"]) == meta.sha256
    assert (params["train_size"], params["val_size"]) == ("160", "40")


def assert_history_logged_per_epoch(client, run_id: str, csv_path: Path) -> list[dict[str, str]]:
    """Exactly one value per epoch for each history metric, equal to the CSV for dvc plots."""
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for key in fitting.HISTORY_KEYS:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
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
    return rows


def assert_datasets_logged(run, meta, *, contexts: dict[str, int]) -> None:
    """The run's dataset inputs: one per split, named after it, with the data's digest and
    source, the full content sha256 and the number of examples as input tags."""
    inputs = {}
    for dataset_input in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        inputs[tags["mlflow.data.context"]] = (dataset_input.dataset, tags)
    assert set(inputs) == set(contexts)
    for context, (dataset, tags) in inputs.items():
        assert dataset.name == f"{meta.dataset}/{context}"
        assert dataset.digest == meta.content_sha256[:36]
        assert tags["data_sha256"] == meta.content_sha256
        assert tags["examples"] == str(contexts[context])
        assert meta.source.location in dataset.source
        assert '"images"' in dataset.schema and '"labels"' in dataset.schema


def assert_environment_recorded(tags: dict[str, str]) -> None:
    """The run names the lock file its environment matches and that file's sha256, or says that
    none matches and where (pipeline.environment)."""
    expected = environment.environment_tags()
    assert {key: tags.get(key) for key in expected} == expected
    if expected["environment.lock"] != "none":
        content = (REPO / expected["environment.lock"]).read_bytes()
        assert tags["environment.lock_sha256"] == hashlib.sha256(content).hexdigest()
    else:
        assert tags["environment.lock_differences"].startswith("requirements/")


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
    run_json = contracts.TrainedRun.read(paths["out"] / "run.json")
    run = client.get_run(run_json.run_id)
    assert run.info.experiment_id == experiment.experiment_id == run_json.experiment_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp"
    assert run_json.variant == "mlp"
    assert run_json.tracking_uri == tracking_store

    meta = contracts.PreparedMeta.read(prepared / "meta.json")
    assert_params_describe_variant_and_data(run.data.params, meta)
    params = run.data.params

    # Tags tie the run to the commit it ran at and to its DVC stage.
    assert run.data.tags["git_commit"] == workspace.commit
    assert run.data.tags["git_dirty"] == "false"
    assert run.data.tags["dvc_stage"] == "train@mlp"
    assert_environment_recorded(run.data.tags)
    # The UI opens the experiment on its training runs, and the run says what it is.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    description = run.data.tags["mlflow.note.content"]
    assert "`mlp`" in description and "train@mlp" in description and DATASET in description
    assert_datasets_logged(run, meta, contexts={"training": 160, "validation": 40})

    rows = assert_history_logged_per_epoch(client, run.info.run_id, paths["plots"])

    # Summary metrics: the same in MLflow and in the DVC metrics file.
    metrics = contracts.TrainMetrics.read(paths["metrics"])
    assert metrics.epochs_run == 3
    assert metrics.best_val_accuracy == pytest.approx(
        max(float(row["val_accuracy"]) for row in rows), rel=1e-5
    )
    assert metrics.final_val_accuracy >= 0.8
    for key in ("final_val_loss", "final_val_accuracy", "epochs_run", "best_val_accuracy"):
        assert run.data.metrics[key] == pytest.approx(getattr(metrics, key))
    assert metrics == run_json.metrics

    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"model_summary.txt", "training_curves.png"} <= artifacts
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    summary = (folder / "model_summary.txt").read_text()
    assert "Total params" in summary and "probabilities" in summary
    assert (folder / "training_curves.png").read_bytes()[:8] == PNG

    # The logged model and model.keras are the same trained model.
    with np.load(prepared / "val.npz") as data:
        x_val = data["x"]
    logged = mlflow.keras.load_model(run_json.model_uri)
    local = keras.saving.load_model(paths["out"] / "model.keras")
    logged_probabilities = np.asarray(logged(x_val))
    assert logged_probabilities.shape == (len(x_val), 10)
    np.testing.assert_allclose(logged_probabilities, np.asarray(local(x_val)), atol=1e-6)
    assert params["model.parameters"] == str(local.count_params())
    assert not list(paths["out"].glob(".*"))


def test_unknown_variant_is_refused(workspace: Workspace, prepared: Path):
    write_params(workspace.root / "params.yaml")
    argv = ["--params=params.yaml", "--variant=resnet", f"--data={prepared}", "--out=models/resnet"]
    argv += ["--metrics=metrics/resnet.json", "--plots=plots/resnet.csv"]
    with pytest.raises(SystemExit, match=r"'resnet' is not defined in train\.models"):
        train.main(argv)
    assert not (workspace.root / "models").exists()


@pytest.mark.parametrize("missing", ["--out", "--metrics", "--plots", "--data", "--params"])
def test_every_path_is_required(missing: str, capsys):
    argv = ["--params=p.yaml", "--variant=mlp", "--data=d", "--out=o", "--metrics=m", "--plots=c"]
    with pytest.raises(SystemExit):
        train.parse_args([arg for arg in argv if not arg.startswith(missing + "=")])
    assert f"the following arguments are required: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(architecture="mlp", dense=(32,), batch_norm=True, dropout=0.1),
        ModelConfig(architecture="cnn", conv_blocks=(ConvBlockConfig(filters=4),), dense=(16,)),
    ],
    ids=["mlp", "cnn"],
)
def test_fitting_on_the_learnable_synthetic_task_lowers_the_loss(config):
    def split(count: int, seed: int):
        images, labels = synthetic.make_split(count, seed=seed)
        return prepare.normalize(images), prepare.one_hot(labels, 10)

    (x_train, y_train), (x_val, y_val) = split(200, seed=1), split(50, seed=2)
    fit = FitConfig(learning_rate=0.01, batch_size=32, epochs=3, seed=0)
    keras.utils.set_random_seed(fit.seed)
    model = architectures.build(config, num_classes=10)
    fitting.compile_model(model, fit, train_size=len(x_train))
    seen = []
    history = fitting.fit_model(
        model,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        fit=fit,
        on_epoch=lambda epoch, logs: seen.append((epoch, sorted(logs))),
    )
    assert {key: len(values) for key, values in history.items()} == dict.fromkeys(
        fitting.HISTORY_KEYS, 3
    )
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert all(set(fitting.HISTORY_KEYS) <= set(keys) for _, keys in seen)
    assert history["learning_rate"] == pytest.approx([0.01] * 3)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    # Chance is 0.1; the bright square's position gives the class away.
    assert history["val_accuracy"][-1] >= 0.8


def test_fit_input_is_every_example_once_per_epoch_without_autotuning():
    """tf.data's autotuning stalls `fit` between epochs (the teardown of each epoch's iterator
    waits for its tuning thread), so neither split autotunes; shuffling still covers each
    training example once per epoch, in a new order each epoch."""
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    fit = FitConfig(batch_size=4, seed=0)
    data = fitting.training_data(x, x, fit)
    val = fitting.batched(x, x, batch_size=4)
    assert data.options().autotune.enabled is False
    assert val.options().autotune.enabled is False
    epochs = [[int(v) for batch, _ in data for v in batch[:, 0]] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]
    assert [len(batch) for batch, _ in val] == [4, 4, 2]


def test_random_shifts_move_each_training_image_by_at_most_the_asked_pixels():
    """`fit.augment_shift: 2` translates every training image by its own random offset of up to 2
    pixels a side, losing nothing that stays inside the frame; 0 leaves the images as they are."""
    x = np.zeros((32, 28, 28), np.float32)
    x[:, 12:16, 12:16] = 1.0  # a 4x4 square, centre of mass at (13.5, 13.5)
    y = np.arange(32, dtype=np.float32)

    def one_batch(shift: int) -> tuple[np.ndarray, np.ndarray]:
        fit = FitConfig(batch_size=32, seed=0, augment_shift=shift)
        ((images, labels),) = list(fitting.training_data(x, y, fit))
        return np.asarray(images, np.float32), np.asarray(labels)

    plain, _ = one_batch(0)
    np.testing.assert_array_equal(plain, x)
    shifted, labels = one_batch(2)
    assert sorted(labels.tolist()) == list(range(32))
    mass = shifted.sum(axis=(1, 2))
    np.testing.assert_allclose(mass, 16.0, rtol=0.02)
    grid = np.arange(28, dtype=np.float32)
    rows = (shifted.sum(axis=2) * grid).sum(axis=1) / mass - 13.5
    cols = (shifted.sum(axis=1) * grid).sum(axis=1) / mass - 13.5
    assert np.abs(rows).max() <= 2.05 and np.abs(cols).max() <= 2.05
    assert np.abs(rows).max() > 0.5 and np.abs(cols).max() > 0.5
    assert len(np.unique(np.round(rows, 1))) > 8


def test_random_mirroring_flips_about_half_the_training_images_left_right(monkeypatch):
    """`fit.augment_flip` hands each training image over as it is or mirrored, its own draw,
    in float32 even when the model trains in bf16."""
    x = np.random.default_rng(0).random((64, 28, 28), dtype=np.float32)
    y = np.arange(64, dtype=np.float32)
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    devices.configure(mixed_precision=True)
    try:
        fit = FitConfig(batch_size=64, seed=0, augment_flip=True)
        ((images, labels),) = list(fitting.training_data(x, y, fit))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert images.dtype == np.float32
    images, order = np.asarray(images), np.asarray(labels).astype(int)
    source = x[order]
    kept = np.all(images == source, axis=(1, 2))
    flipped = np.all(images == source[:, :, ::-1], axis=(1, 2))
    assert (kept ^ flipped).all()
    assert 16 <= flipped.sum() <= 48


def test_augmented_batches_are_the_same_for_the_same_seed():
    """Mirroring and shifts draw the same for the same seed, run after run (DVC reproduces)."""
    x = np.random.default_rng(0).random((256, 28, 28), dtype=np.float32)
    y = np.arange(256, dtype=np.float32)

    def batches(seed: int) -> list[np.ndarray]:
        fit = FitConfig(batch_size=32, seed=seed, augment_flip=True, augment_shift=2)
        return [np.asarray(images) for images, _ in fitting.training_data(x, y, fit)]

    first = batches(3)
    for a, b in zip(first, batches(3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, batches(4), strict=True))


def test_train_is_deterministic_for_a_seed_and_reports_each_epoch():
    """The core function alone, no MLflow: the same seed gives the same model, twice."""
    images, labels = synthetic.make_split(120, seed=1)
    x, y = prepare.normalize(images), prepare.one_hot(labels, 10)
    variant = config.build(VariantConfig, TINY_VARIANTS["mlp"], "mlp")
    seen: list[int] = []
    first = train.train(
        variant_config=variant,
        x_train=x[:80],
        y_train=y[:80],
        x_val=x[80:],
        y_val=y[80:],
        on_epoch=lambda epoch, logs: seen.append(epoch),
    )
    again = train.train(
        variant_config=variant, x_train=x[:80], y_train=y[:80], x_val=x[80:], y_val=y[80:]
    )
    assert seen == [0, 1, 2]
    assert first.metrics.epochs_run == 3 and first.device["device"] in ("CPU", "GPU x1")
    assert first.history["loss"] == again.history["loss"]
    assert dataclasses.replace(first.metrics, train_seconds=0) == dataclasses.replace(
        again.metrics, train_seconds=0
    )


def every_layer(model: keras.Model) -> list:
    """`model`'s layers, and those of the models inside it."""
    found = []
    for layer in model.layers:
        found.extend(every_layer(layer) if isinstance(layer, keras.Model) else [layer])
    return found


@pytest.mark.parametrize(
    ("mixed_precision", "mirrored"),
    [(True, False), (False, False), (True, True)],
    ids=["bf16", "float32", "bf16-mirror-averaged"],
)
def test_a_trained_variant_comes_back_and_saves_in_stock_layers_and_float32(
    monkeypatch, tmp_path: Path, mixed_precision: bool, mirrored: bool
):
    """bf16 and fused batch norm speed training; what is measured, saved and served computes in
    float32 with Keras's own layers, so loading it needs nothing from this package. With
    `model.test_time_flip` it is the mirror-averaged model, and validation measures that."""
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    images, labels = synthetic.make_split(120, seed=1)
    x, y = prepare.normalize(images), prepare.one_hot(labels, 10)
    variant = config.build(VariantConfig, TINY_VARIANTS["cnn"], "cnn")
    variant = dataclasses.replace(
        variant,
        model=dataclasses.replace(variant.model, batch_norm=True, test_time_flip=mirrored),
        fit=dataclasses.replace(variant.fit, mixed_precision=mixed_precision),
    )
    trained = train.train(
        variant_config=variant, x_train=x[:80], y_train=y[:80], x_val=x[80:], y_val=y[80:]
    )
    policy = "mixed_bfloat16" if mixed_precision else "float32"
    assert trained.device["precision_policy"] == policy
    assert keras.mixed_precision.global_policy().name == "float32"
    path = tmp_path / "model.keras"
    io.save_keras(path, trained.model)
    with warnings.catch_warnings():
        # Keras warns when the saved optimizer state does not fit the model it loads into.
        warnings.simplefilter("error")
        loaded = keras.models.load_model(path)
    for model in (trained.model, loaded):
        assert {layer.dtype_policy.name for layer in every_layer(model)} == {"float32"}
        batch_norms = [
            type(layer)
            for layer in every_layer(model)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert batch_norms == [keras.layers.BatchNormalization] * 2  # the conv's and the dense's
    with zipfile.ZipFile(path) as saved:
        assert b"pipeline" not in saved.read("config.json")
    probabilities = loaded.predict(x[80:], verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, trained.model.predict(x[80:], verbose=0), atol=1e-6)
    mirror_answers = loaded.predict(x[80:, :, ::-1], verbose=0)
    assert np.allclose(mirror_answers, probabilities, atol=1e-6) == mirrored
    # The reported validation accuracy is the float32 model's.
    accuracy = np.mean(probabilities.argmax(1) == y[80:].argmax(1))
    assert trained.metrics.final_val_accuracy == pytest.approx(accuracy)
    # Both the returned and the loaded model train on from the trained optimizer's state:
    # 3 epochs of 80 images in batches of 32 were 9 steps, one more epoch makes 12.
    for model in (trained.model, loaded):
        assert int(model.optimizer.iterations) == 9
        before = model.get_weights()
        model.fit(x[:80], y[:80], batch_size=32, epochs=1, verbose=0)
        assert int(model.optimizer.iterations) == 12
        assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_under_dvc_exp_the_run_is_named_after_variant_and_experiment(
    workspace: Workspace, prepared: Path, sqlite_store: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DVC_EXP_NAME", "lunar-moth")
    paths = run_train(workspace, prepared)
    run = mlflow.MlflowClient(sqlite_store).get_run(
        contracts.TrainedRun.read(paths["out"] / "run.json").run_id
    )
    assert run.info.run_name == "mlp@lunar-moth"
    assert run.data.tags["dvc_experiment"] == "lunar-moth"
    assert "experiment `lunar-moth`" in run.data.tags["mlflow.note.content"]


def test_git_dirty_follows_code_and_params_not_pipeline_outputs(workspace: Workspace):
    from pipeline import tracking

    for name in ("dvc.lock", "metrics/evaluate.json", "params.yaml", "pipeline/stage.py"):
        (workspace.root / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace.root / name).write_text("first\n")
    git(workspace.root, "add", ".")
    git(workspace.root, "commit", "--quiet", "-m", "project")
    assert tracking.run_tags("train@mlp")["git_dirty"] == "false"

    # What `dvc repro` rewrites before later stages start: not a change of the code.
    (workspace.root / "dvc.lock").write_text("rewritten by dvc\n")
    (workspace.root / "metrics" / "evaluate.json").write_text("{}\n")
    assert tracking.run_tags("train@mlp")["git_dirty"] == "false"

    for name in ("params.yaml", "pipeline/stage.py"):
        (workspace.root / name).write_text("edited\n")
        assert tracking.run_tags("train@mlp")["git_dirty"] == "true", name
        git(workspace.root, "checkout", "--", name)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_training_ends_its_run_as_killed(
    workspace: Workspace, prepared: Path, sqlite_store: str, signum: int
):
    """A CI timeout (SIGTERM) or Ctrl-C (SIGINT) to a real stage process mid-training."""
    endless = {"mlp": TINY_VARIANTS["mlp"] | {"fit": TINY_VARIANTS["mlp"]["fit"] | {"epochs": 500}}}
    write_params(workspace.root / "params.yaml", variants=["mlp"], models=endless)
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.train",
        "--params=params.yaml",
        "--variant=mlp",
    ]
    command += [f"--data={prepared}", "--out=models/mlp", "--metrics=m.json", "--plots=p.csv"]
    environment = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": sqlite_store}
    process = subprocess.Popen(
        command, cwd=workspace.root, env=environment, stderr=subprocess.PIPE, text=True
    )
    client = mlflow.MlflowClient(sqlite_store)
    try:
        run = wait_for_epochs(client, process, epochs=2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "marked KILLED" in stderr
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not (workspace.root / "models").exists() and not (workspace.root / "m.json").exists()


def wait_for_epochs(client, process: subprocess.Popen, *, epochs: int, timeout: float = 120):
    """The stage's RUNNING run once it has logged `epochs` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-2000:]
        experiment = client.get_experiment_by_name(DATASET)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            assert runs[0].info.status == "RUNNING"
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no run logged {epochs} epochs in {timeout} s")


# What TensorFlow writes to stderr when it is imported, on one CPU or another.
CHATTER = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard")


@pytest.mark.slow
def test_tensorflow_start_up_chatter_is_hidden_unless_asked_for():
    code = "from pipeline.model import devices; devices.import_tensorflow(); print('imported')"

    def stderr_of(**switch: str) -> str:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
        environment.pop("PIPELINE_TF_LOGS", None)
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=environment | switch,
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == "imported"
        return result.stderr

    # The baseline: what TensorFlow prints on import here when nothing filters it. Which lines
    # depends on the CPU (oneDNN's notice only where oneDNN's optimisations are on).
    loud = stderr_of(PIPELINE_TF_LOGS="1")
    assert any(line in loud for line in CHATTER), loud
    quiet = stderr_of()
    assert not any(line in quiet for line in CHATTER), quiet
