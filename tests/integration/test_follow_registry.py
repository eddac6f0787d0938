"""`python -m serving.tools.follow` against a real `mlflow server`: told by a signed registry
webhook, it points the service's tag file at the new champion; a delivery without the secret's
signature gets 401 and moves nothing. Polling is set to ten minutes, so only the webhook can have
woken it."""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import follow_stack, servers
from tests.support.registry import register_versions

pytestmark = pytest.mark.slow
NAME = "shapes-classifier"


def wait_for(path: Path, text: str, timeout: float, follower: servers.Server) -> float:
    """Seconds until `path` holds `text`; AssertionError with the follower's log otherwise."""
    started = time.monotonic()
    while not (path.is_file() and path.read_text().strip() == text):
        assert follower.process.poll() is None, follower.tail()
        assert time.monotonic() - started < timeout, (
            f"{path} never named {text}:\n{follower.tail()}"
        )
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("follow-server")
    webhooks = follow_stack.WEBHOOK_SERVER_ENV
    with servers.mlflow_server(root, backend=f"sqlite:///{root / 'db'}", env=webhooks) as server:
        register_versions(server.url, 2, name=NAME)
        yield server.url


def test_a_signed_webhook_moves_the_service_and_a_forged_one_does_not(
    registry_server: str, tmp_path: Path
):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry_server)
    client.set_registered_model_alias(NAME, "champion", "1")
    secret, port = secrets.token_hex(16), servers.free_port()
    tag_file = tmp_path / "serving-tag"
    command = [sys.executable, "-m", "serving.tools.follow", "--tag-file", str(tag_file)]
    command += ["--interval", "600", "--webhook-port", str(port)]
    environment = {
        "MLFLOW_TRACKING_URI": registry_server,
        "REGISTERED_MODEL": NAME,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "MLFLOW_WEBHOOK_SECRET": secret,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = tmp_path / "follow.log"
    with servers.running(
        "follow", command, port=port, log=log, env=dict(os.environ) | environment
    ) as follower:
        wait_for(tag_file, f"{NAME}:v1", 180, follower)
        forged = httpx.post(
            f"http://127.0.0.1:{port}/webhook",
            json={"entity": "model_version_alias", "data": {"name": NAME, "alias": "champion"}},
            headers={"X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": str(int(time.time()))}
            | {"X-MLflow-Signature": "v1,AAAA"},
        )
        assert forged.status_code == 401 and "signature" in forged.json()["error"]
        client.set_registered_model_alias(NAME, "champion", "2")
        # The webhook wakes it at once; packaging v2 (an ONNX export here) takes a few seconds.
        took = wait_for(tag_file, f"{NAME}:v2", 120, follower)
        assert took < 60, took
        assert secret not in log.read_text()


def sqlite_registry(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    """Two versions of NAME in a SQLite store under `tmp_path`: a client of it, and the
    environment a follower of it runs with."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_versions(uri, 2, name=NAME, artifact_location=(tmp_path / "artifacts").as_uri())
    environment = os.environ | {
        "MLFLOW_TRACKING_URI": uri,
        "REGISTERED_MODEL": NAME,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return mlflow.MlflowClient(tracking_uri=uri), environment


def test_without_a_server_it_polls_the_sqlite_store(tmp_path: Path):
    """The default store of `make repro`: no webhooks, so the alias is read every --interval."""
    client, environment = sqlite_registry(tmp_path)
    client.set_registered_model_alias(NAME, "champion", "1")
    tag_file = tmp_path / "serving-tag"
    command = [sys.executable, "-m", "serving.tools.follow", "--tag-file", str(tag_file)]
    with servers.running(
        "follow",
        [*command, "--interval", "1"],
        port=servers.free_port(),
        log=tmp_path / "follow.log",
        env=environment,
    ) as follower:
        wait_for(tag_file, f"{NAME}:v1", 180, follower)
        client.set_registered_model_alias(NAME, "champion", "2")
        assert wait_for(tag_file, f"{NAME}:v2", 120, follower) < 60


def test_the_shadow_follower_empties_its_file_when_the_alias_names_none(tmp_path: Path):
    """`--optional` (what `make serve SHADOW=challenger` runs): the challenger's tag while there
    is one, an empty file (no shadow) once the alias is gone, never an error."""
    client, environment = sqlite_registry(tmp_path)
    client.set_registered_model_alias(NAME, "challenger", "2")
    tag_file = tmp_path / "shadow-tag"
    command = [sys.executable, "-m", "serving.tools.follow", "--tag-file", str(tag_file)]
    command += ["--alias", "challenger", "--optional", "--once"]
    run = functools.partial(subprocess.run, command, env=environment, capture_output=True)
    first = run(text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert tag_file.read_text().strip() == f"{NAME}:v2"
    client.delete_registered_model_alias(NAME, "challenger")
    second = run(text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert tag_file.read_text().strip() == ""
    assert "the alias names no version" in second.stderr
