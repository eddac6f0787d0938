"""The whole pipeline through a PostgreSQL-backed `mlflow server` behind basic auth, trained with
the trainer account, then its champion packaged, followed and served with the read-only one.

What is checked is read straight from PostgreSQL and the artefact folder, so a client that fell
back to a local store would fail here. Anonymous requests get 401, the read-only account 403 when
it tries to move `champion`, and no password is left anywhere a run writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline import contracts
from pipeline.champion import registry
from tests.support import servers
from tests.team.conftest import ADMIN, REGISTERED_MODEL, Project, TeamServer

pytestmark = [pytest.mark.team, pytest.mark.slow]
VARIANTS = ("mlp", "cnn")


def records(project: Project) -> Path:
    """Where the served champion's predictions are recorded: beside its BentoML store."""
    return Path(project.env["BENTOML_HOME"]).parent / "monitoring"


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
    reader = Project(trained_project.root, trained_project.env | team_server.account("serving"))
    packaged = reader.run(sys.executable, "-m", "serving.tools.package", timeout=300)
    tag = packaged.stdout.strip().splitlines()[-1]
    assert tag == f"{REGISTERED_MODEL}:v{champion.version}"
    # The follower's round (what `make serve` runs beside the service) reads the alias the same way.
    tag_file = tmp_path / "serving-tag"
    reader.run(sys.executable, "-m", "serving.tools.follow", "--once", "--tag-file", str(tag_file))
    assert tag_file.read_text().strip() == tag

    with np.load(trained_project.root / "data" / "prepared" / "test.npz") as test:
        images, labels = test["x"][:40], test["labels"][:40]
    environment = reader.env | {
        "BENTO_MODEL": tag,
        "SERVING_WORKERS": "1",
        "MONITOR_DIR": str(records(trained_project)),
    }
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


# The REST calls the project makes (tracking, registry, artefacts), as (method, path).
PROJECT_APIS = [
    ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=synthetic"),
    ("POST", "/api/2.0/mlflow/runs/search"),
    ("POST", "/api/2.0/mlflow/runs/create"),
    ("GET", f"/api/2.0/mlflow/registered-models/get?name={REGISTERED_MODEL}"),
    ("GET", f"/api/2.0/mlflow/registered-models/alias?name={REGISTERED_MODEL}&alias=champion"),
    ("POST", "/api/2.0/mlflow/registered-models/alias"),
    ("POST", "/api/2.0/mlflow/model-versions/create"),
    ("GET", "/api/2.0/mlflow/model-versions/search"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts"),
    ("GET", "/api/2.0/mlflow/webhooks"),
]


@pytest.mark.parametrize(("method", "path"), PROJECT_APIS)
def test_anonymous_requests_are_refused(trained_project: Project, team_server, method, path):
    response = httpx.request(method, team_server.url + path, json={} if method == "POST" else None)
    assert response.status_code == 401, response.text
    passwords = team_server.passwords
    as_admin = httpx.request(
        method,
        team_server.url + path,
        auth=(ADMIN, passwords[ADMIN]),
        json={} if method == "POST" else None,
    )
    assert as_admin.status_code != 401, as_admin.text


def test_the_read_only_account_cannot_move_champion(trained_project: Project, team_server):
    champion = registry.version_by_alias(team_server.client(), REGISTERED_MODEL, registry.CHAMPION)
    move = {"name": REGISTERED_MODEL, "alias": registry.CHAMPION, "version": str(champion.version)}
    url = f"{team_server.url}/api/2.0/mlflow/registered-models/alias"
    refused = httpx.post(url, json=move, auth=("serving", team_server.passwords["serving"]))
    assert refused.status_code == 403, refused.text
    allowed = httpx.post(url, json=move, auth=("trainer", team_server.passwords["trainer"]))
    assert allowed.status_code == 200, allowed.text
    wrong = httpx.post(url, json=move, auth=("trainer", team_server.passwords["serving"]))
    assert wrong.status_code == 401, wrong.text


def test_no_password_is_left_where_the_runs_write(trained_project: Project, team_server):
    """After training, packaging and serving: the project (dvc.lock, metrics, DVC's logs, the
    BentoML store, the prediction records), the server's log and every param and tag in
    PostgreSQL hold none of the passwords."""
    secrets = {name: password.encode() for name, password in team_server.passwords.items()}
    store = Path(trained_project.env["BENTOML_HOME"])
    folders = [trained_project.root, team_server.artifacts, store, records(trained_project)]
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    files.append(team_server.log)
    assert any(path.name == "dvc.lock" for path in files)
    assert any(path.suffix == ".onnx" and "bentoml" in path.parts for path in files)
    assert any("monitoring" in path.parts for path in files), "no prediction records"
    found = [
        f"{name} in {path}"
        for path in files
        for name, secret in secrets.items()
        if secret in path.read_bytes()
    ]
    for table in ("params", "tags", "model_version_tags", "registered_model_tags"):
        for (value,) in team_server.query(f"SELECT value FROM {table}"):
            found += [f"{name} in {table}" for name, s in secrets.items() if s.decode() in value]
    assert not found, found


def test_the_read_only_follower_polls_when_the_webhook_is_refused(
    trained_project: Project, team_server, tmp_path
):
    """Only an admin may register a webhook: the follower says so and follows by polling."""
    tag_file = tmp_path / "serving-tag"
    command = [sys.executable, "-m", "serving.tools.follow", "--tag-file", str(tag_file)]
    command += ["--interval", "1", "--webhook-port", "0"]
    environment = trained_project.env | team_server.account("serving")
    environment["MLFLOW_WEBHOOK_SECRET"] = "a-webhook-secret-for-the-test"
    with servers.running(
        "follow",
        command,
        port=0,
        log=tmp_path / "follow.log",
        env=environment,
        cwd=trained_project.root,
    ) as follower:
        deadline = time.monotonic() + 120
        while not (tag_file.exists() and "refused the webhook" in follower.output()):
            assert follower.process.poll() is None, follower.tail()
            assert time.monotonic() < deadline, follower.tail()
            time.sleep(0.5)
    assert "following by polling every 1.0 s" in follower.output()
    assert "a-webhook-secret-for-the-test" not in follower.output()
    assert tag_file.read_text().startswith(f"{REGISTERED_MODEL}:v")
