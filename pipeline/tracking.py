"""Every MLflow tracking call of the pipeline: where the store is, the runs, what they log.

The stages compute; this module records. Importing it does nothing (MLflow is imported by the
functions that need it: `import mlflow` costs seconds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import environment

# The stages catch `tracking.Stopped` and defer stops around `fit` through this module, which
# ends a stopped run as KILLED; the signal handling itself is pipeline/stopping.py.
from pipeline.stopping import Stopped as Stopped
from pipeline.stopping import stop_deferred as stop_deferred
from pipeline.stopping import stop_on_signals
from pipeline.stopping import stop_requested as stop_requested
from pipeline.stopping import stop_signal as stop_signal

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# The experiment's kind for MLflow 3 clients that read it; 3.17's UI opens its GenAI views whatever
# the tag says (docs/tracking.md), so `make ui` prints a URL that asks for the training view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Files `dvc repro` rewrites: a change to them says nothing about the code or the params.
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "plots")
# MLflow keeps at most this many characters of a dataset digest.
DIGEST_LENGTH = 36
# The tag of a run trained with mirroring on data whose classes change meaning mirrored.
MIRRORING_WARNING_TAG = "mirroring_warning"


def project_root(start: Path | None = None) -> Path:
    """The repository root, even inside a DVC temporary experiment copy.

    `dvc exp run --temp/--queue` runs stages in `.dvc/tmp/exps/...`; the embedded MLflow store must
    still be the main workspace's, or runs would vanish with the copy.
    """
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / ".git").exists():
            return candidate
    return path


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Hold the promotion gate (read the champion, score it, move the alias) for this process
    against every other pipeline process of this project on this machine, whatever the store.

    `dvc queue start -j N` runs N `evaluate` stages at once, each in a temporary copy; without
    the lock two of them could both read the old champion and the worse one move the alias last.
    The lock file is in the main workspace's `.dvc/tmp/`, which the copies share (project_root).
    Machines sharing one tracking server do not share it: `pipeline.champion.promotion` settles
    those."""
    import fcntl

    root = project_root()
    folder = root / ".dvc" / "tmp" if (root / ".dvc").is_dir() else root
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "registry.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set (a team's server), else the SQLite store at the repo root.

    SQLite paths come out absolute: a relative `sqlite:///mlflow.db` would follow the working
    directory, into a `dvc exp run --queue` copy that is deleted afterwards. A relative path in
    `MLFLOW_TRACKING_URI` is taken from the project root.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root() / DEFAULT_DB}"
    path = uri.removeprefix("sqlite:///")
    if path != uri and path and not path.startswith("/") and ":memory:" not in path:
        return f"sqlite:///{project_root() / path}"
    return uri


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment `name`; with SQLite, artefacts go to `mlartifacts/` beside the db."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_embedded(client.tracking_uri):
        # Artefacts live beside the database they belong to, wherever the process runs from.
        database = Path(client.tracking_uri.removeprefix("sqlite:///")).resolve()
        location = (database.parent / DEFAULT_ARTIFACTS / name).as_uri()
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def mark_experiment_kind(client, experiment_id: str) -> None:
    """Tag an experiment as model training (older stores made it without the tag)."""
    experiment = client.get_experiment(experiment_id)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def _git(*args: str) -> str | None:
    try:
        # In the working directory: a `dvc exp run --temp/--queue` copy is a git repository of
        # its own, holding the experiment's params.
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def code_changed() -> bool | None:
    """Whether tracked files other than the pipeline's own outputs differ from HEAD (None when
    git cannot tell): edited code or params, not the dvc.lock and metrics `dvc repro` rewrites."""
    excluded = [f":(exclude){path}" for path in PIPELINE_OUTPUTS]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return None if status is None else bool(status)


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to its code, pipeline and environment: git commit, dirty flag, DVC
    stage and exp, and the lock file the installed packages match (`environment.lock`, its
    `environment.lock_sha256`; pipeline.environment)."""
    commit = _git("rev-parse", "HEAD")
    dirty = code_changed()
    tags = {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "dvc_stage": stage,
    } | environment.environment_tags()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def connect() -> Any:
    """Point this process's MLflow at `tracking_uri()` and return a client for it.

    The fluent API (`mlflow.start_run`, `mlflow.keras.load_model("models:/...")`) follows the
    process-wide URI, so the stages set it once here.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": value}, for MLflow params."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


@dataclass(frozen=True)
class Run:
    """An MLflow run this process started."""

    run_id: str
    experiment_id: str


def run_name(variant: str) -> str:
    """The variant, and under `dvc exp run` the experiment: `cnn`, `cnn@lunar-moth`."""
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{variant}@{experiment}" if experiment else variant


@contextlib.contextmanager
def training_run(
    *, experiment: str, run_name: str, stage: str, description: str = ""
) -> Iterator[Run]:
    """An active MLflow run in `experiment` (created if new), tagged with git and DVC facts.

    A run stopped by SIGTERM or Ctrl-C ends as KILLED (then `Stopped` propagates), one that
    raised as FAILED, never left RUNNING.
    """
    import mlflow

    client = connect()
    experiment_id = get_or_create_experiment(client, experiment)
    mark_experiment_kind(client, experiment_id)
    tags = run_tags(stage) | ({"mlflow.note.content": description} if description else {})
    with (
        stop_on_signals(),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run,
    ):
        try:
            yield Run(run_id=run.info.run_id, experiment_id=experiment_id)
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise


def dataset_inputs(
    *, name: str, content_sha256: str, source: Any, splits: Mapping[str, Any]
) -> list[Any]:
    """MLflow dataset inputs for the prepared `splits` ({context: (x, y)}) of one dataset.

    Each is named `<name>/<context>`, its source is where the raw files came from (a URL for a
    mirror, a path otherwise) and its digest the content sha256, cut to the 36 characters MLflow
    keeps; the full digest is the input's `data_sha256` tag. Only metadata is logged.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.schema import Schema, TensorSpec

    with warnings.catch_warnings():
        # A local path matches MLflow's local source under two schemes; it warns, then picks it.
        warnings.simplefilter("ignore", UserWarning)
        origin = resolve_dataset_source(str(source.location))
    inputs = []
    for context, (x, y) in splits.items():
        schema = Schema(
            [
                TensorSpec(x.dtype, (-1, *x.shape[1:]), "images"),
                TensorSpec(y.dtype, (-1, *y.shape[1:]), "labels"),
            ]
        )
        dataset = MetaDataset(
            origin, name=f"{name}/{context}", digest=content_sha256[:DIGEST_LENGTH], schema=schema
        )
        tags = [
            InputTag("mlflow.data.context", context),
            InputTag("data_sha256", content_sha256),
            InputTag("examples", str(len(x))),
        ]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    return inputs


def log_datasets(run_id: str, inputs: Sequence[Any]) -> None:
    """Link run `run_id` to the datasets it read (see `dataset_inputs`)."""
    import mlflow

    mlflow.MlflowClient().log_inputs(run_id, datasets=list(inputs))


def log_params(params: Mapping[str, Any]) -> None:
    """Params of the active run."""
    import mlflow

    mlflow.log_params(dict(params))


def set_run_tags(tags: Mapping[str, str]) -> None:
    """Tags of the active run."""
    import mlflow

    mlflow.set_tags(dict(tags))


def log_epoch(epoch: int, logs: Mapping[str, float], keys: Sequence[str]) -> None:
    """One epoch's `keys` from `logs`, as step `epoch` of the active run, without waiting."""
    import mlflow

    mlflow.log_metrics({key: logs[key] for key in keys}, step=epoch, synchronous=False)


def pip_requirements() -> list[str]:
    """Pinned requirements for the logged model; listing them saves MLflow seconds of inference."""
    from importlib import metadata

    requirements = []
    for name in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mlflow"):
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def log_trained_model(
    model: Any, *, metrics: Mapping[str, float], figure: Any, example: Any
) -> str:
    """Log the final metrics, the model's summary, the training-curves figure and the model
    (Keras flavor, signature from `example`) to the active run; return the logged model's URI."""
    import mlflow
    import mlflow.keras
    from mlflow.models import infer_signature

    mlflow.log_metrics(dict(metrics))
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    mlflow.log_text("\n".join(lines), "model_summary.txt")
    mlflow.log_figure(figure, "training_curves.png")
    probabilities = model.predict(example, verbose=0)
    info = mlflow.keras.log_model(
        model,
        name="model",
        signature=infer_signature(example, probabilities),
        pip_requirements=pip_requirements(),
    )
    return info.model_uri


def log_evaluation(
    run_id: str,
    *,
    metrics: Mapping[str, float],
    report: Mapping[str, Any],
    report_text: str,
    figures: Mapping[str, Any],
) -> None:
    """Add test metrics, the classification report and figures to the training run `run_id`.

    Through the client, by run id: the finished training run is not reopened, so its status stays
    what training left.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()]
    )
    client.log_text(run_id, report_text, "evaluation/classification_report.txt")
    client.log_dict(run_id, dict(report), "evaluation/classification_report.json")
    for file_name, figure in figures.items():
        client.log_figure(run_id, figure, f"evaluation/{file_name}")


def log_calibrated_model(
    run_id: str, model: Any, *, example: Any, onnx_folder: Path | None = None
) -> str:
    """Log `model` (the temperature-scaled one `evaluate` registers) as `calibrated_model` of the
    finished training run `run_id`, with the files in `onnx_folder` (its ONNX exports) under the
    logged model's `onnx/`; return the logged model's URI.

    MLflow logs a model only into an active run: the run is resumed for that, then given back
    the status and end time it had, also when logging fails, so a finished training run stays
    finished at the time its training ended. SIGTERM or Ctrl-C meanwhile waits for that (a few
    seconds), then raises `Stopped`; a signal's default action would leave the run RUNNING.
    """
    import mlflow
    import mlflow.keras
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info
    with stop_on_signals(), stop_deferred():
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.keras.log_model(
                    model,
                    name="calibrated_model",
                    signature=infer_signature(example, model.predict(example, verbose=0)),
                    pip_requirements=pip_requirements(),
                )
                if onnx_folder is not None:
                    client.log_model_artifacts(info.model_id, str(onnx_folder), "onnx")
        finally:
            client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_uri
