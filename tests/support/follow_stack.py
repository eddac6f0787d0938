"""A service that follows a real registry, run as `make serve` runs it, and the moves of its alias.

`followed_service(mode, folder)` brings up, in `folder`: the registry (`webhook`: an `mlflow server`
on SQLite with webhooks allowed to loopback; `polling`: the SQLite store itself, which fires no
webhook), three versions that carry their ONNX files as `evaluate` registers them (so packaging one
is a copy, not an export), `champion` on v1, the sidecar `python -m serving.tools.follow` (told by
webhooks with its own polling set to ten minutes, or polling every `POLL_INTERVAL_S`), and
`bentoml serve` with two workers following the sidecar's tag file. `FollowedService.promote` moves
the alias as `evaluate` does (`registry.make_champion`); `rollback` runs the real command. Tests
and `bench/swap.py` use it alike; nothing here asserts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.champion import registry
from tests.support import servers
from tests.support.registry import register_versions

MODES = ("webhook", "polling")
NAME = "swap-classifier"
VERSIONS = 3
# The sidecar's --interval when it polls: `make serve`'s FOLLOW_INTERVAL.
POLL_INTERVAL_S = 5.0
# Issue 35: the new version answers within this of the alias change with webhooks, and within
# the poll interval plus this when polling.
TAKEOVER_GOAL_S = 2.0
# What an `mlflow server` needs to deliver webhooks to a receiver on 127.0.0.1 over http.
WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    # The server caches its list of webhooks for 60 s by default: one registered meanwhile
    # would get no delivery for up to a minute.
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Move:
    """One move of `champion`: to `version`, by a `promote` or a `rollback`. The registry moved it
    after `since` and before `done` (epoch s): `since` is when the alias call started for a
    promotion made here, and the `champion_since` the rollback command recorded on the version
    (a few registry calls earlier) for a rollback; `done`, when the call or command returned."""

    kind: str
    version: str
    since: float
    done: float


@dataclass
class FollowedService:
    """The running pieces: the service's URL, the registry, the two processes and their logs."""

    mode: str
    url: str
    tracking_uri: str
    folder: Path
    serve: servers.Server
    follower: servers.Server
    initial: Move
    moves: list[Move] = field(default_factory=list)

    @property
    def goal_s(self) -> float:
        """Seconds the new version may take to answer after the alias moved (issue 35)."""
        polling = POLL_INTERVAL_S if self.mode == "polling" else 0.0
        return polling + TAKEOVER_GOAL_S

    @property
    def pointer(self) -> Path:
        """The tag file the sidecar writes and the workers follow."""
        return self.folder / "tag"

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def promote(self, version: str) -> Move:
        """`champion` to `version`, as `evaluate` moves it."""
        client = AliasTimer(self.client())
        registry.make_champion(client, NAME, version, reason="promoted under load")
        done = time.time()
        return self._moved(Move("promote", version, client.started, done))

    def rollback(self, reason: str) -> Move:
        """`python -m pipeline.champion.rollback --reason ...`, as an operator runs it."""
        command = [sys.executable, "-m", "pipeline.champion.rollback", "--reason", reason]
        command += ["--params", str(self.folder / "params.yaml")]
        environment = dict(os.environ) | {"MLFLOW_TRACKING_URI": self.tracking_uri}
        done = subprocess.run(
            command, env=environment, cwd=servers.REPO_ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"the rollback failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return self._moved(champion_move("rollback", self.client(), time.time()))

    def _moved(self, move: Move) -> Move:
        self.moves.append(move)
        return move


class AliasTimer:
    """An MLflow client that notes when its last `set_registered_model_alias` call started."""

    def __init__(self, client: Any) -> None:
        self.client, self.started = client, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def set_registered_model_alias(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.time()
        self.client.set_registered_model_alias(*args, **kwargs)


def champion_move(kind: str, client: Any, done: float) -> Move:
    """The move that made the current champion, as the registry recorded it."""
    champion = registry.champion(client, NAME)
    since = datetime.fromisoformat(champion.tags[registry.CHAMPION_SINCE]).timestamp()
    return Move(kind, str(champion.version), since, done)


@contextlib.contextmanager
def registry_store(mode: str, folder: Path) -> Iterator[str]:
    """The tracking URI of a fresh registry holding `VERSIONS` versions of NAME."""
    database = f"sqlite:///{folder / 'mlflow.db'}"
    if mode == "polling":
        artifacts = (folder / "artifacts").as_uri()
        register_versions(database, VERSIONS, name=NAME, onnx=True, artifact_location=artifacts)
        yield database
        return
    with servers.mlflow_server(
        folder / "server", backend=database, env=WEBHOOK_SERVER_ENV, timeout=START_TIMEOUT_S
    ) as server:
        register_versions(server.url, VERSIONS, name=NAME, onnx=True)
        yield server.url


def wait_for_tag(path: Path, tag: str, follower: servers.Server, timeout: float) -> None:
    """Until the sidecar's tag file names `tag`; RuntimeError with its log otherwise."""
    started = time.monotonic()
    while not (path.is_file() and path.read_text().strip() == tag):
        if follower.process.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"the follower never named {tag} in {path}:\n{follower.tail()}")
        time.sleep(0.05)


def follower_command(mode: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The sidecar's command line and the environment it adds."""
    command = [sys.executable, "-m", "serving.tools.follow", "--tag-file", str(folder / "tag")]
    command += ["--params", str(folder / "params.yaml")]
    environment = {"BENTOML_HOME": str(folder / "bentoml"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if mode == "polling":
        return [*command, "--interval", str(POLL_INTERVAL_S)], environment
    # Ten minutes between its own rounds: in this mode only a webhook can have moved it.
    port = servers.free_port()
    command += ["--interval", "600", "--webhook-port", str(port)]
    return command, environment | {"MLFLOW_WEBHOOK_SECRET": secrets.token_hex(16)}


@contextlib.contextmanager
def followed_service(mode: str, folder: Path) -> Iterator[FollowedService]:
    """The registry, the sidecar and `bentoml serve` (2 workers) on v1, ready; all stopped after."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(f"evaluate:\n  registered_model: {NAME}\n")
    with registry_store(mode, folder) as tracking_uri:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        registry.make_champion(client, NAME, "1", reason="the first version")
        command, environment = follower_command(mode, folder)
        environment |= {"MLFLOW_TRACKING_URI": tracking_uri}
        with servers.running(
            "follow",
            command,
            port=servers.free_port(),
            log=folder / "follow.log",
            env=dict(os.environ) | environment,
        ) as follower:
            wait_for_tag(folder / "tag", f"{NAME}:v1", follower, START_TIMEOUT_S)
            serving = {
                "BENTOML_HOME": environment["BENTOML_HOME"],
                "BENTO_MODEL": f"{NAME}:v1",
                "SERVING_WORKERS": "2",
                "FOLLOW_FILE": str(folder / "tag"),
                "MONITOR_DIR": str(folder / "monitoring"),
            }
            with servers.bentoml_serve(serving, log=folder / "serve.log") as serve:
                serve.wait_ready("/readyz", timeout=START_TIMEOUT_S)
                initial = champion_move("initial", client, time.time())
                yield FollowedService(
                    mode, serve.url, tracking_uri, folder, serve, follower, initial
                )
