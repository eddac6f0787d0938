"""The servers under load: starting ours and MLflow's, and the CPU and memory they use.

Starting, waiting for and stopping a server go through `tests/support/servers.py`, the project's
one way to run a server subprocess; this module adds what a benchmark measures about one: CPU
seconds of its whole process tree (BentoML's workers run in sessions of their own, so the tree,
not the process group, is what a server is), the rest of the machine's load, and resident memory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine
from tests.support import servers

SERVICE = "serving.service:Classifier"
# More than this many cores busy with other work makes the figures unrepresentative.
BUSY_CORES = 0.2


def server_env(*, bentoml_home: str, tracking_uri: str, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with the model store and registry the servers must use."""
    env = dict(os.environ)
    env["BENTOML_HOME"] = bentoml_home
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def start_ours(
    *,
    service: str,
    env: dict[str, str],
    log_dir: Path,
    ready_timeout: float,
    name: str = "ours",
    cwd: Path = servers.REPO_ROOT,
) -> servers.Server:
    """`bentoml serve <service>` from `cwd` (the code to serve) on a free port, waited for until
    /readyz answers."""
    port = servers.free_port()
    command = servers.bentoml_command(port, service)
    log = log_dir / "bentoml.log"
    server = servers.start(name, command, port=port, log=log, env=env, cwd=cwd)
    return _ready(server, "/readyz", ready_timeout)


def start_mlflow(
    *, model_uri: str, workers: int, env: dict[str, str], log_dir: Path, ready_timeout: float
) -> servers.Server:
    """`mlflow models serve -m <model_uri>` on a free port, waited for until /ping answers."""
    port = servers.free_port()
    command = servers.mlflow_models_command(port, model_uri=model_uri, workers=workers)
    server = servers.start("mlflow", command, port=port, log=log_dir / "mlflow.log", env=env)
    return _ready(server, "/ping", ready_timeout)


def _ready(server: servers.Server, path: str, timeout: float) -> servers.Server:
    # A server that never gets ready must not outlive the benchmark that started it.
    try:
        server.wait_ready(path, timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds: the whole machine (busy), a server's processes, this process."""

    wall: float
    machine: float
    server: float
    client: float
    # CPU seconds of each process of the server's tree, to see how the work spreads over workers.
    processes: dict[int, float] = field(default_factory=dict)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(value) for value in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds used so far by each live process of `root`'s tree (a server's)."""
    table = servers.process_table()
    return {pid: table[pid][2] for pid in servers.process_tree(root, table)}


def cpu_snapshot(server_pid: int) -> CpuSnapshot:
    """The counters now; `server_pid` <= 0 leaves the server out (no server yet)."""
    times = os.times()
    processes = tree_cpu_seconds(server_pid) if server_pid > 0 else {}
    return CpuSnapshot(
        wall=time.perf_counter(),
        machine=machine_busy_seconds(),
        server=sum(processes.values()),
        client=times.user + times.system,
        processes=processes,
    )


def cpu_between(first: CpuSnapshot, last: CpuSnapshot) -> dict[str, Any]:
    """Average cores busy between two snapshots: server, client, other work, and the server's
    busiest processes (its workers)."""
    wall = max(last.wall - first.wall, 1e-9)
    server = (last.server - first.server) / wall
    client = (last.client - first.client) / wall
    machine = (last.machine - first.machine) / wall
    per_process = sorted(
        (
            (seconds - first.processes.get(pid, 0.0)) / wall
            for pid, seconds in last.processes.items()
        ),
        reverse=True,
    )
    return {
        "server": round(server, 2),
        "client": round(client, 2),
        "other": round(max(0.0, machine - server - client), 2),
        "server_processes": [round(cores, 2) for cores in per_process if cores >= 0.01],
    }


def background_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other work on this machine, measured over `seconds` while we wait."""
    first = cpu_snapshot(-1)
    time.sleep(seconds)
    return cpu_between(first, cpu_snapshot(-1))["other"]


def memory(server_pid: int) -> dict[str, int]:
    """Resident bytes of a server's process tree: "rss" summed, "pss" with shared pages split."""
    return servers.tree_memory(server_pid)


def stop_all(running: Iterable[servers.Server]) -> None:
    """Stop every server; a second Ctrl-C or SIGTERM must not cut this short (each is bounded)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, signal.SIG_IGN)
    try:
        for server in running:
            server.stop()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def peak_memory(
    after_ready: dict[str, dict[str, int]], cells: Iterable[Any]
) -> dict[str, dict[str, int]]:
    """Per server, the largest resident memory seen: after it was ready or at a cell's end."""
    peaks = {name: dict(found) for name, found in after_ready.items()}
    for cell in cells:
        for key, value in cell.memory.items():
            peak = peaks.setdefault(cell.server, {"rss": 0, "pss": 0})
            peak[key] = max(peak.get(key, 0), value)
    return peaks


def describe_machine() -> dict[str, Any]:
    """Print and return the machine, its versions and the load already on it."""
    info = machine.machine()
    print(
        f"- machine: {info['cpu']}, os.cpu_count() = {info['cpu_count']}"
        f" ({info['usable_cpus']} usable; lscpu: {info['cores_per_socket']} cores/socket,"
        f" {info['threads_per_core']} threads/core); Python {info['python']}"
    )
    print("- versions: " + ", ".join(f"{key} {value}" for key, value in info["versions"].items()))
    info["background_cores"] = background_load()
    warning = (
        "; WARNING: the figures below share the machine with it (see the 'other' cores)"
        if info["background_cores"] > BUSY_CORES
        else ""
    )
    print(
        f"- background load before start: {info['background_cores']:.2f} cores busy with other"
        f" work{warning}"
    )
    return info
