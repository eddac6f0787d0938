"""Every MLflow tracking call of the pipeline: where the store is, the runs, what they log.

The stages compute; this module records. Importing it does nothing (MLflow is imported by the
functions that need it: `import mlflow` costs seconds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


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


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set (a team's server), else the SQLite store at the repo root.

    The path is absolute: a relative `sqlite:///mlflow.db` would follow the working directory.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_DB}"


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
    return client.create_experiment(name, artifact_location=location)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=project_root()
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to its code and pipeline: git commit, dirty flag, DVC stage and exp."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "dvc_stage": stage,
    }
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


@contextlib.contextmanager
def training_run(*, experiment: str, run_name: str, stage: str) -> Iterator[Run]:
    """An active MLflow run in `experiment` (created if new), tagged with git and DVC facts."""
    import mlflow

    client = connect()
    experiment_id = get_or_create_experiment(client, experiment)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=run_tags(stage)
    ) as run:
        yield Run(run_id=run.info.run_id, experiment_id=experiment_id)


def log_params(params: Mapping[str, Any]) -> None:
    """Params of the active run."""
    import mlflow

    mlflow.log_params(dict(params))


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
    """Add test metrics, the classification report and figures to the training run `run_id`."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(dict(metrics))
        mlflow.log_text(report_text, "evaluation/classification_report.txt")
        mlflow.log_dict(dict(report), "evaluation/classification_report.json")
        for file_name, figure in figures.items():
            mlflow.log_figure(figure, f"evaluation/{file_name}")
