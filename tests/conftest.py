"""Shared fixtures: tiny prepared data, a git workspace, real MLflow stores (SQLite, server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline import prepare
from tests.support import servers, synthetic

DATASET = "synthetic"
SERVER_START_TIMEOUT = 120.0

# Two small variants that learn the synthetic task in a few epochs; tests copy and change them.
TINY_VARIANTS = {
    "mlp": {
        "model": {"architecture": "mlp", "dense": [32], "batch_norm": True, "dropout": 0.1},
        "fit": {
            "learning_rate": 0.01,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "batch_size": 32,
            "epochs": 3,
            "seed": 1,
        },
    },
    "cnn": {
        "model": {
            "architecture": "cnn",
            "conv_blocks": [{"filters": 4, "kernel_size": 3, "pool": True, "dropout": 0.1}],
            "dense": [16],
        },
        "fit": {"learning_rate": 0.01, "batch_size": 32, "epochs": 3, "seed": 1},
    },
}


@dataclass(frozen=True)
class Workspace:
    """A temporary project folder that is the working directory and a git repository."""

    root: Path
    commit: str


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared-data folder (train 160 / val 40 / test 50) made by the real `prepare` stage.

    Shared by the whole session: tests read it and must not change it.
    """
    root = tmp_path_factory.mktemp("prepared-data")
    raw = root / "raw"
    paths = synthetic.write_dataset(raw, n_train=200, n_test=50, gz=False)
    manifest = {
        "dataset": DATASET,
        "source": {"kind": "local_dir", "location": str(raw)},
        "class_names": list(synthetic.CLASS_NAMES),
        "files": {role: {"sha256": f"sha-{role}"} for role in paths},
    }
    (raw / "manifest.json").write_text(json.dumps(manifest))
    (root / "params.yaml").write_text("prepare:\n  val_fraction: 0.2\n  seed: 3\n")
    out = root / "prepared"
    prepare.main(
        [
            f"--params={root / 'params.yaml'}",
            f"--raw={raw}",
            f"--out={out}",
            f"--metrics={root / 'prepare.json'}",
            f"--plot={root / 'samples.png'}",
        ]
    )
    return out


def write_params(path: Path, *, variants=("mlp", "cnn"), models=None, evaluate=None) -> Path:
    """A params.yaml with the tiny variants (or `models`) and the given `evaluate` section."""
    params = {
        "train": {"variants": list(variants), "models": models or TINY_VARIANTS},
        "evaluate": {"registered_model": "synthetic-classifier", "misclassified_examples": 10}
        | (evaluate or {}),
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=tests", "-c", "user.email=tests@example.invalid", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """tmp_path as the working directory, a git repository with one clean commit.

    Stages find the project root (where an embedded store keeps its artefacts) and the git facts
    they tag runs with from the working directory, so they must not see this repository.
    """
    _git(tmp_path, "init", "--quiet")
    (tmp_path / "README").write_text("test workspace\n")
    _git(tmp_path, "add", "README")
    _git(tmp_path, "commit", "--quiet", "-m", "test workspace")
    monkeypatch.chdir(tmp_path)
    return Workspace(root=tmp_path, commit=_git(tmp_path, "rev-parse", "HEAD").strip())


@pytest.fixture(scope="session")
def _migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database, created once: creating one costs ~2 s of migrations."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _use_tracking_uri(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture
def sqlite_store(
    workspace: Workspace, _migrated_db: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh SQLite MLflow store in the workspace, set as MLFLOW_TRACKING_URI; yields its URI."""
    import mlflow

    path = shutil.copy(_migrated_db, workspace.root / "mlflow.db")
    uri = f"sqlite:///{path}"
    _use_tracking_uri(uri, monkeypatch)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artefacts; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = servers.free_port()
    command = servers.mlflow_server_command(
        port, backend=f"sqlite:///{root / 'server.db'}", artifacts=root / "artifacts"
    )
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    # Background job runners (seven worker processes) serve features these tests do not use.
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with servers.running(
        "mlflow server", command, port=port, log=root / "server.log", env=environment, cwd=root
    ) as server:
        server.wait_ready("/health", timeout=SERVER_START_TIMEOUT)
        yield server.url


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def tracking_store(
    request: pytest.FixtureRequest, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The tracking URI a stage talks to: a SQLite store, or (slow) a real server over HTTP."""
    import mlflow

    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_store")
        return
    uri = request.getfixturevalue("mlflow_server")
    _use_tracking_uri(uri, monkeypatch)
    yield uri
    mlflow.set_tracking_uri(None)
