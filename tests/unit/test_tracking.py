"""Where the stages' MLflow store is, from the workspace or a DVC experiment copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking


@pytest.fixture
def experiment_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory is a `dvc exp run --queue` copy inside project `tmp_path`."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return copy


def test_the_embedded_store_is_the_projects_not_the_copys(experiment_copy: Path):
    root = experiment_copy.parents[3]
    assert tracking.tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"


def test_a_relative_sqlite_uri_is_taken_from_the_project_root(
    experiment_copy: Path, monkeypatch: pytest.MonkeyPatch
):
    root = experiment_copy.parents[3]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db")
    assert tracking.tracking_uri() == f"sqlite:///{root / 'stores' / 'team.db'}"


@pytest.mark.parametrize(
    "uri", ["sqlite:////srv/mlflow.db", "http://127.0.0.1:5000", "postgresql://u@db/mlflow"]
)
def test_absolute_and_server_uris_are_kept(
    experiment_copy: Path, monkeypatch: pytest.MonkeyPatch, uri: str
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == uri


# Tries the registry lock without waiting: prints "held" when another process holds it.
TRY_LOCK = """
import fcntl
from pipeline import tracking

blocking = fcntl.flock
fcntl.flock = lambda handle, op: blocking(handle, op | fcntl.LOCK_NB if op == fcntl.LOCK_EX else op)
try:
    with tracking.registry_lock():
        print("got it")
except BlockingIOError:
    print("held")
"""


def test_the_registry_lock_is_shared_by_experiment_copies_and_the_workspace(
    experiment_copy: Path,
):
    """Held here (inside a queued experiment's copy), a second process working in the main
    workspace finds it held: two parallel `evaluate`s take the promotion gate in turn."""
    root = experiment_copy.parents[3]
    repo = Path(__file__).resolve().parents[2]
    environment = os.environ | {"PYTHONPATH": str(repo)}

    def try_lock() -> str:
        command = [sys.executable, "-c", TRY_LOCK]
        done = subprocess.run(
            command, cwd=root, env=environment, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with tracking.registry_lock():
        assert try_lock() == "held"
    assert try_lock() == "got it"
