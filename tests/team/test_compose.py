"""docker-compose.yml, checked without Docker (these machines have none): the services a team
needs, a health check on each long-running one, start order on health, and the versions its
MLflow image installs matching the project's."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
import yaml

from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.team
COMPOSE = REPO_ROOT / "docker-compose.yml"
LONG_RUNNING = ("postgres", "minio", "mlflow", "bento")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_each_long_running_service_has_a_health_check(services, name):
    check = services[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] > 0


def test_services_start_after_what_they_need_is_healthy(services):
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in services, f"{name} depends on unknown {needed}"
            wanted = condition["condition"]
            assert wanted in ("service_healthy", "service_completed_successfully"), wanted
            if wanted == "service_healthy":
                assert "healthcheck" in services[needed], f"{needed} has no health check"
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "buckets"}


def test_mlflow_uses_postgres_and_proxies_artefacts_to_minio(services):
    command = " ".join(services["mlflow"]["command"])
    assert re.search(r"--backend-store-uri=postgresql://mlflow:\S+@postgres:5432/mlflow", command)
    assert "--artifacts-destination=s3://mlflow/" in command
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "store/mlflow" in services["buckets"]["entrypoint"][-1]


def test_the_mlflow_image_installs_the_projects_versions(services):
    dockerfile = services["mlflow"]["build"]["dockerfile_inline"]
    assert f"mlflow[auth]=={metadata.version('mlflow')}" in dockerfile
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["optional-dependencies"]["team"]:
        if requirement.startswith("mlflow["):
            continue  # pinned to the very version installed here, above
        assert f'"{requirement}"' in dockerfile, f"{requirement} (the team extra) not installed"


def test_the_bento_container_is_not_asked_for_a_model_tag(services):
    """A built bento serves the model it packs (tests/integration/test_bento_build.py), so the
    compose file does not make BENTO_MODEL a required variable."""
    assert "BENTO_MODEL" not in (services["bento"].get("environment") or {})


def test_mlflow_accepts_the_host_names_the_containers_use(services):
    """MLflow 3.17 answers 403 to a Host header it does not list (other than localhost and
    private IPs): the bento and clients reach it as `mlflow`."""
    command = services["mlflow"]["command"]
    [allowed] = [item for item in command if item.startswith("--allowed-hosts=")]
    assert {"mlflow", "mlflow:5000"} <= set(allowed.removeprefix("--allowed-hosts=").split(","))
