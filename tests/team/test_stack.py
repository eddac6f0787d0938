"""The whole pipeline through a PostgreSQL-backed `mlflow server`, then its champion served.

What is checked is read straight from PostgreSQL and the artefact folder, so a client that fell
back to a local store would fail here.
"""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pytest

from pipeline import contracts
from pipeline.champion import registry
from tests.support import servers
from tests.team.conftest import REGISTERED_MODEL, Project, TeamServer

pytestmark = [pytest.mark.team, pytest.mark.slow]
VARIANTS = ("mlp", "cnn")


def trained_run(project: Project, variant: str) -> contracts.TrainedRun:
    return contracts.TrainedRun.read(project.root / "models" / variant / "run.json")


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_training_is_a_finished_run_in_postgres(
    trained_project: Project, team_server: TeamServer, variant: str
):
    run = trained_run(trained_project, variant)
    assert run.tracking_uri == team_server.url
    [(name, status)] = team_server.query(
        "SELECT name, status FROM runs WHERE run_uuid = %s", run.run_id
    )
    assert (name, status) == (variant, "FINISHED")
    [(epochs,)] = team_server.query(
        "SELECT count(DISTINCT step) FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy'",
        run.run_id,
    )
    assert epochs == run.metrics.epochs_run
    [(params,)] = team_server.query("SELECT count(*) FROM params WHERE run_uuid = %s", run.run_id)
    assert params >= 10, "the variant's params were not logged"


def test_the_chosen_variant_is_version_1_and_champion_in_postgres(
    trained_project: Project, team_server: TeamServer
):
    champion = contracts.Champion.read(trained_project.root / "models" / "champion.json")
    assert (champion.registered_model, champion.version) == (REGISTERED_MODEL, 1)
    assert champion.tracking_uri == team_server.url
    assert champion.run_id == trained_run(trained_project, champion.variant).run_id
    [(run_id,)] = team_server.query(
        "SELECT run_id FROM model_versions WHERE name = %s AND version = 1", REGISTERED_MODEL
    )
    assert run_id == champion.run_id
    # The session's queued experiments (test_experiments.py) may have registered later versions:
    # v1 stays champion unless one of them beat its test accuracy (the gate needs a gain > 0).
    [(champion_version,)] = team_server.query(
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        REGISTERED_MODEL,
        registry.CHAMPION,
    )
    accuracy = {
        int(version): float(value)
        for version, value in team_server.query(
            "SELECT version, value FROM model_version_tags WHERE name = %s AND key = %s",
            REGISTERED_MODEL,
            "test_accuracy",
        )
    }
    assert champion_version == 1 or accuracy[champion_version] > accuracy[1], accuracy


def test_artefacts_go_through_the_server_to_its_destination(
    trained_project: Project, team_server: TeamServer
):
    locations = [
        location for (location,) in team_server.query("SELECT artifact_location FROM experiments")
    ]
    assert locations and all(loc.startswith("mlflow-artifacts:") for loc in locations), locations
    logged = list(team_server.artifacts.rglob("model.keras"))
    assert len(logged) >= len(VARIANTS), f"models under {team_server.artifacts}: {logged}"
    # Nothing fell back to the embedded store.
    assert not (trained_project.root / "mlflow.db").exists()
    assert not (trained_project.root / "mlartifacts").exists()


def test_package_and_serve_the_champion_from_the_server(
    trained_project: Project, team_server: TeamServer, tmp_path
):
    champion = registry.version_by_alias(team_server.client(), REGISTERED_MODEL, registry.CHAMPION)
    packaged = trained_project.run(sys.executable, "-m", "serving.tools.package", timeout=300)
    tag = packaged.stdout.strip().splitlines()[-1]
    assert tag == f"{REGISTERED_MODEL}:v{champion.version}"

    with np.load(trained_project.root / "data" / "prepared" / "test.npz") as test:
        images, labels = test["x"][:40], test["labels"][:40]
    environment = trained_project.env | {"BENTO_MODEL": tag, "SERVING_WORKERS": "1"}
    with servers.bentoml_serve(
        environment, log=tmp_path / "serve.log", cwd=trained_project.root
    ) as server:
        server.wait_ready("/readyz", timeout=120)
        metadata = httpx.post(f"{server.url}/metadata", timeout=30).json()
        answers = httpx.post(
            f"{server.url}/predict", json={"pixels": images.tolist()}, timeout=60
        ).json()
    assert metadata["version"] == str(champion.version)
    assert metadata["run_id"] == champion.run_id
    assert metadata["tracking_uri"] == team_server.url
    assert {answer["model_version"] for answer in answers} == {str(champion.version)}
    correct = sum(answer["label"] == label for answer, label in zip(answers, labels, strict=True))
    # The tiny variants learn the synthetic classes almost perfectly; chance is 10%.
    assert correct >= 30, f"only {correct}/40 test images classified correctly"
