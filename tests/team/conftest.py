"""The team stack, one per session: a private PostgreSQL cluster, an `mlflow server` on it with
proxied artefact storage behind MLflow's basic-auth app (users and permissions in PostgreSQL too),
the accounts of team-users.yaml made by `python -m pipeline.team_users`, and a tiny project whose
pipeline ran through that server with the trainer account.

This test process talks to the server as its admin (MLFLOW_TRACKING_USERNAME/PASSWORD set for the
session); every command a test runs gets the account it should use (`TeamServer.account`).

Fixtures only; what they are built from lives in `tests/support` (postgres.py, project.py).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import postgres, project, servers
from tests.support.servers import REPO_ROOT

SERVER_START_TIMEOUT = 120.0
DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"
REGISTERED_MODEL = "team-classifier"
ADMIN = "admin"
# The accounts of team-users.yaml and the variables their passwords come from.
ACCOUNTS = {"trainer": "MLFLOW_TRAINER_PASSWORD", "serving": "MLFLOW_SERVING_PASSWORD"}
AUTH_CONFIG = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = {database}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


@dataclass(frozen=True)
class TeamServer:
    """A running `mlflow server` whose backend store is a PostgreSQL database."""

    url: str
    cluster: postgres.Cluster
    database: str
    artifacts: Path
    # Account name -> password: the admin's and those of team-users.yaml.
    passwords: Mapping[str, str] = field(default_factory=dict)
    log: Path | None = None

    def account(self, name: str) -> dict[str, str]:
        """The environment that makes MLflow clients log in as `name`."""
        return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": self.passwords[name]}

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
    passwords = {name: secrets.token_urlsafe(18) for name in (ADMIN, *ACCOUNTS)}
    auth_config = root / "auth.ini"
    auth_database = postgres_cluster.create_database(AUTH_DATABASE)
    auth_config.write_text(AUTH_CONFIG.format(database=auth_database, admin=ADMIN))
    environment = {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": passwords[ADMIN],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    with (
        servers.mlflow_server(
            root,
            backend=backend,
            timeout=SERVER_START_TIMEOUT,
            env=environment,
            app_name="basic-auth",
        ) as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        team = TeamServer(
            server.url, postgres_cluster, DATABASE, root / "artifacts", passwords, server.log
        )
        for name, value in team.account(ADMIN).items():
            patch.setenv(name, value)
        yield team


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
    # The admin makes the accounts (the real command, reading the tiny project's params.yaml) ...
    passwords = {variable: team_server.passwords[name] for name, variable in ACCOUNTS.items()}
    project.run(
        tiny,
        *(
            sys.executable,
            "-m",
            "pipeline.team_users",
            "--config",
            str(REPO_ROOT / "team-users.yaml"),
        ),
        env=env | passwords,
    )
    # ... and the pipeline runs as the trainer.
    trained = Project(tiny, env | team_server.account("trainer"))
    trained.run("dvc", "repro")
    project.commit_all(tiny, "dvc repro through the team server")
    return trained
