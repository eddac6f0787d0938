"""A throwaway, committed copy of this project with tiny params, and DVC run in it (tests/team).

The copy holds what a fresh clone would (tracked files plus untracked ones git does not ignore,
so work in progress is tested too) and is its own git repository with one commit: `dvc exp`
needs a commit to start experiments from, `git clone` one to copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from tests.support import synthetic
from tests.support.servers import REPO_ROOT
from tests.support.workspace import TINY_VARIANTS, git

BIN_DIR = Path(sys.executable).parent


def copy_tree(destination: Path) -> None:
    """The repository's files as a fresh clone would have them, plus untracked unignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def commit_all(root: Path, message: str) -> str:
    """Commit everything git does not ignore in `root`; the new commit's hash."""
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def tiny_project(
    destination: Path, *, data_dir: Path, registered_model: str, n_train: int = 600
) -> Path:
    """A committed copy of the project that trains the tiny variants on synthetic data in
    `data_dir` and registers them as `registered_model`."""
    copy_tree(destination)
    synthetic.write_dataset(data_dir, n_train=n_train, n_test=200)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    params["data"] = {
        "dataset": "synthetic",
        "local_dir": str(data_dir),
        "class_names": list(synthetic.CLASS_NAMES),
    }
    params["train"]["variants"] = list(TINY_VARIANTS)
    params["train"]["models"] = TINY_VARIANTS
    params["evaluate"]["registered_model"] = registered_model
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(destination, "init", "--quiet")
    commit_all(destination, "tiny project")
    return destination


def environment(*, tracking_uri: str | None, bentoml_home: Path) -> dict[str, str]:
    """This process's environment for a stage, DVC or serving subprocess: the venv's tools
    first on PATH, MLflow at `tracking_uri` (None: the project's own SQLite store)."""
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "BENTO_MODEL", "REGISTERED_MODEL", "DVC_EXP_NAME"):
        env.pop(name, None)
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env | {
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(bentoml_home),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run(
    project: Path, *command: str, env: Mapping[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """`command` in `project` (a venv tool when it names one); AssertionError with its output
    when it fails."""
    tool = BIN_DIR / command[0]
    executable = str(tool) if tool.exists() else command[0]
    result = subprocess.run(
        [executable, *command[1:]],
        cwd=project,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result
