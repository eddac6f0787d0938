"""The team stack, one per session: a private PostgreSQL cluster, an `mlflow server` on it with
proxied artefact storage, and a tiny project whose pipeline ran through that server.

Fixtures only; what they are built from lives in `tests/support` (postgres.py, project.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import postgres, project, servers

SERVER_START_TIMEOUT = 120.0
DATABASE = "mlflow"
REGISTERED_MODEL = "team-classifier"


@dataclass(frozen=True)
class TeamServer:
    """A running `mlflow server` whose backend store is a PostgreSQL database."""

    url: str
    cluster: postgres.Cluster
    database: str
    artifacts: Path

    def query(self, sql: str, *arguments) -> list[tuple]:
        """Rows straight from the backend database, not through MLflow."""
        return self.cluster.query(self.database, sql, *arguments)

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url)


@dataclass(frozen=True)
class Project:
    """A committed tiny project, and the environment its commands run with."""

    root: Path
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 600):
        return project.run(self.root, *command, env=self.env, timeout=timeout)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    if postgres.binaries() is None:
        pytest.skip(postgres.INSTALL_HINT)
    with postgres.running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def team_server(
    postgres_cluster: postgres.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TeamServer]:
    """`mlflow server --backend-store-uri postgresql://... --artifacts-destination <folder>`."""
    root = tmp_path_factory.mktemp("team-server")
    backend = postgres_cluster.create_database(DATABASE)
    with servers.mlflow_server(root, backend=backend, timeout=SERVER_START_TIMEOUT) as server:
        yield TeamServer(server.url, postgres_cluster, DATABASE, root / "artifacts")


@pytest.fixture(scope="session")
def trained_project(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A tiny project after `dvc repro` against the team server, its dvc.lock committed.

    Shared by the session: tests may add commits and experiments, not change files in place.
    """
    root = tmp_path_factory.mktemp("team-project")
    tiny = project.tiny_project(
        root / "project", data_dir=root / "raw", registered_model=REGISTERED_MODEL
    )
    env = project.environment(tracking_uri=team_server.url, bentoml_home=root / "bentoml")
    trained = Project(tiny, env)
    trained.run("dvc", "repro")
    project.commit_all(tiny, "dvc repro through the team server")
    return trained
