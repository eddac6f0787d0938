"""Shared fixtures: tiny prepared data, a git workspace, real MLflow stores (SQLite, server).

Fixtures only; what they are built from lives in `tests/support`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.stages import prepare
from tests.support import registry, servers, synthetic
from tests.support.workspace import Workspace, init_repository

pytest_plugins = ["tests.support.strict_skips", "tests.support.leftovers"]

SERVER_START_TIMEOUT = 120.0
# Test folders whose files share session fixtures that cost a minute or more to make (the team
# stack: PostgreSQL, an mlflow server, a project trained against it): one xdist worker runs them.
SHARED_SESSION = ("team",)


def unit_of_work(nodeid: str) -> str:
    """What one xdist worker runs together: a test's file, or its SHARED_SESSION folder."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[1:2] and parts[1] in SHARED_SESSION else path


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (`make test`: `-n <cores>`), a unit of work (`unit_of_work`) goes to
    one worker whole, so a file's module fixtures and a shared folder's session fixtures are
    made once; xdist hands out the units with the most tests first. (`--dist loadgroup` would
    group with marks, but pytest-xdist 3.8 names the group through `item._nodeid`, which
    pytest 9 no longer reads: the groups were silently split, pytest-xdist issue 1386.)
    An explicit `--dist` other than the default keeps its own scheduling."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnitOfWork(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return ByUnitOfWork(config, log)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared-data folder (train 160 / val 40 / test 50) made by the real `prepare` stage.

    Shared by the whole session: tests read it and must not change it.
    """
    root = tmp_path_factory.mktemp("prepared-data")
    raw = root / "raw"
    synthetic.write_raw(raw, n_train=200, n_test=50)
    (root / "params.yaml").write_text("prepare:\n  val_fraction: 0.2\n  seed: 3\n")
    out = root / "prepared"
    prepare.main(
        [
            f"--params={root / 'params.yaml'}",
            f"--raw={raw}",
            f"--out={out}",
            f"--metrics={root / 'prepare.json'}",
            f"--class-counts={root / 'class_counts'}",
            f"--plot={root / 'samples.png'}",
        ]
    )
    return out


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """tmp_path as the working directory, a git repository with one clean commit.

    Stages find the project root (where an embedded store keeps its artefacts) and the git facts
    they tag runs with from the working directory, so they must not see this repository.
    """
    monkeypatch.chdir(tmp_path)
    return init_repository(tmp_path)


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
    with servers.mlflow_server(
        root, backend=f"sqlite:///{root / 'server.db'}", timeout=SERVER_START_TIMEOUT
    ) as server:
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


@pytest.fixture(scope="session")
def untrained_model():
    """A tiny untrained Keras MLP over 28x28 images with 10 classes (its outputs are fixed)."""
    from pipeline.config import ModelConfig
    from pipeline.model import architectures

    return architectures.build_mlp(ModelConfig(architecture="mlp"), num_classes=10)


@pytest.fixture
def model_registry(sqlite_store: str, untrained_model) -> registry.Registry:
    """A real registry on a fresh SQLite store, and runs to register."""
    import mlflow

    from pipeline import tracking

    client = mlflow.MlflowClient(sqlite_store)
    experiment_id = tracking.get_or_create_experiment(client, "registry")
    return registry.Registry(client, untrained_model, experiment_id)
