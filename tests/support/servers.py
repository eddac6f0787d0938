"""One way to start, wait for and stop a server subprocess (tests and benchmarks alike).

A server runs in a session of its own with its output in a log file. BentoML's workers start
sessions of their own too, so stopping a server means its whole process tree, noted from /proc
before the first signal, not just its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent


class ServerError(RuntimeError):
    """A server exited before it was ready, or never became ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, start time in ticks, user + system CPU seconds), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces and parentheses; the fields after it do not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        table[int(entry.name)] = (
            int(fields[1]),
            int(fields[19]),
            (int(fields[11]) + int(fields[12])) / ticks,
        )
    return table


def process_tree(root: int, table: Mapping[int, tuple[int, int, float]]) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        if pid in table:
            tree.append(pid)
            pending.extend(children.get(pid, []))
    return tree


def tree_memory(root: int) -> dict[str, int]:
    """Resident memory of `root`'s process tree in bytes, summed over its processes.

    "rss" counts pages shared between processes (a forked worker's libraries, say) once per
    process; "pss" shares them out, so it is what the tree really adds to the machine's use.
    """
    totals = {"rss": 0, "pss": 0}
    for pid in process_tree(root, process_table()):
        for key, path in (("rss", "status"), ("pss", "smaps_rollup")):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
                    if line.startswith(("VmRSS:", "Pss:")):
                        totals[key] += int(line.split()[1]) * 1024
                        break
    return totals


@dataclass
class Server:
    """A server subprocess we started: its URL, its log, when it started."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path
    started: float = field(default_factory=time.perf_counter)
    ready_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def tail(self, characters: int = 5000) -> str:
        return self.output()[-characters:]

    def workers(self) -> list[int]:
        """The pids of the server's live descendants (BentoML's workers, say)."""
        return process_tree(self.pid, process_table())[1:]

    def wait_ready(self, path: str, *, timeout: float) -> float:
        """Seconds from start until GET `path` answers 200; ServerError if it never does."""
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.process.returncode} before it was ready;"
                    f" its log ({self.log}) ends:\n{self.tail()}"
                )
            if time.perf_counter() - self.started > timeout:
                raise ServerError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            # A starting server may accept the connection and answer nothing, hence the deadline.
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(self.url + path, timeout=2) as response,
            ):
                if response.status == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return self.ready_s
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group, then SIGKILL to whatever is left of the process tree."""
        table = process_table()
        tree = {pid: table[pid][1] for pid in process_tree(self.pid, table)}
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            # The same pid with the same start time is the same process, not a reused pid.
            table = process_table()
            left = [pid for pid, start in tree.items() if table.get(pid, (0, None))[1] == start]
            if not left:
                return
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.1)


def start(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Server:
    """Start `command` (which serves on `port`) in a session of its own, output to `log`.

    The virtual environment's bin folder leads PATH, so the server finds the same tools.
    """
    environment = dict(os.environ if env is None else env)
    environment["PATH"] = str(BIN_DIR) + os.pathsep + environment.get("PATH", "")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log, started)


@contextlib.contextmanager
def running(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Iterator[Server]:
    """`start` as a context manager that always stops the server."""
    server = start(name, command, port=port, log=log, env=env, cwd=cwd)
    try:
        yield server
    finally:
        server.stop()


def bentoml_command(port: int, service: str = "serving.service:Classifier") -> list[str]:
    """`bentoml serve` of `service` on 127.0.0.1:`port`."""
    return [
        sys.executable,
        *("-m", "bentoml", "serve", service),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


def mlflow_server_command(
    port: int, *, backend: str, artifacts: Path, app_name: str | None = None
) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port` with proxied artefact storage under `artifacts`
    (and `--app-name`, e.g. `basic-auth`, when given)."""
    return [
        str(BIN_DIR / "mlflow"),
        "server",
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        f"--backend-store-uri={backend}",
        f"--artifacts-destination={artifacts}",
        *(("--app-name", app_name) if app_name else ()),
    ]


def mlflow_models_command(port: int, *, model_uri: str, workers: int) -> list[str]:
    """`mlflow models serve` of `model_uri` on 127.0.0.1:`port`, in this environment."""
    return [
        str(BIN_DIR / "mlflow"),
        *("models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
    ]


@contextlib.contextmanager
def bentoml_serve(
    environment: Mapping[str, str], *, log: Path, cwd: Path = REPO_ROOT
) -> Iterator[Server]:
    """`bentoml serve serving.service:Classifier` from `cwd` on a free port, with `environment`
    added to this process's; always stopped. Wait for it with `server.wait_ready("/readyz")`."""
    port = free_port()
    env = dict(os.environ) | dict(environment)
    with running("bentoml serve", bentoml_command(port), port=port, log=log, env=env, cwd=cwd) as (
        server
    ):
        yield server


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    *,
    backend: str,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    app_name: str | None = None,
) -> Iterator[Server]:
    """A ready `mlflow server` on a free port of 127.0.0.1 with `backend` as its store and
    proxied artefacts in `root`/artifacts (log in `root`), `env` added to its environment;
    always stopped."""
    port = free_port()
    command = mlflow_server_command(
        port, backend=backend, artifacts=root / "artifacts", app_name=app_name
    )
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    # Background job runners (seven worker processes) serve features tests do not use.
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    environment |= dict(env or {})
    with running(
        "mlflow server", command, port=port, log=root / "server.log", env=environment, cwd=root
    ) as server:
        server.wait_ready("/health", timeout=timeout)
        yield server
