"""Where MLflow lives, and the git/DVC facts every run records. Importing this does nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
