"""Two "hosts" for a Ray cluster on one machine, made and removed by a test.

As root: two network namespaces joined by a veth pair (10.77.N.1 and 10.77.N.2), so the nodes
talk only over that link and the link can be cut (`ip link set ... down`). Otherwise: two
loopback addresses (127.0.0.2, 127.0.0.3); a node is then lost by killing its processes.
Every process is started here and stopped by pid; namespaces are deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import servers

BIN_DIR = Path(sys.executable).parent
RAY_PORT = 6379


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=True)
    return result.stdout


@dataclass
class Host:
    """Where a node runs: a namespace (or none) and the address its node binds to."""

    name: str
    address: str
    namespace: str | None = None
    link: str | None = None

    def command(self, argv: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.namespace] if self.namespace else []
        return [*prefix, *argv]


@dataclass
class Hosts:
    """Host A (head, MLflow server, driver) and host B (a second node)."""

    a: Host
    b: Host
    kind: str
    env: dict[str, str]
    root: Path
    started: list[servers.Server] = field(default_factory=list)

    def start(self, name: str, host: Host, argv: Sequence[str], **options) -> servers.Server:
        server = servers.start(
            name, host.command(argv), port=0, log=self.root / f"{name}.log", env=self.env, **options
        )
        self.started.append(server)
        return server

    def run(self, host: Host, argv: Sequence[str], **options) -> subprocess.CompletedProcess:
        return subprocess.run(host.command(argv), env=self.env, **options)

    def cut_b(self) -> None:
        """Host B leaves: its link goes down (namespaces), or its node's processes are killed."""
        if self.kind == "namespaces":
            ip("-n", self.b.namespace, "link", "set", self.b.link, "down")
            return
        for server in self.started:
            if server.name == "ray-node-b":
                for pid in [server.pid, *server.workers()]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def ray_env(root: Path) -> dict[str, str]:
    """The environment of every process of the cluster: a token of its own, quick node-loss
    detection (Ray's default takes ~30 s to declare a silent node dead)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | {
        "PATH": f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "HOME": str(root),
    }


@contextlib.contextmanager
def namespaces(root: Path) -> Iterator[Hosts]:
    """Two namespaces joined by a veth pair; removed, with every process in them, at the end."""
    tag = secrets.token_hex(3)
    subnet = random.randint(1, 254)
    a, b = f"rayA{tag}", f"rayB{tag}"
    hosts = Hosts(
        Host("A", f"10.77.{subnet}.1", a, f"va{tag}"),
        Host("B", f"10.77.{subnet}.2", b, f"vb{tag}"),
        "namespaces",
        ray_env(root),
        root,
    )
    try:
        for host in (hosts.a, hosts.b):
            ip("netns", "add", host.namespace)
            ip("-n", host.namespace, "link", "set", "lo", "up")
        ip("link", "add", hosts.a.link, "type", "veth", "peer", "name", hosts.b.link)
        for host in (hosts.a, hosts.b):
            ip("link", "set", host.link, "netns", host.namespace)
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.link)
            ip("-n", host.namespace, "link", "set", host.link, "up")
        yield hosts
    finally:
        stop_all(hosts)
        for host in (hosts.a, hosts.b):
            for pid in namespace_pids(host.namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", host.namespace)


def namespace_pids(namespace: str) -> list[int]:
    try:
        return [int(pid) for pid in ip("netns", "pids", namespace).split()]
    except subprocess.CalledProcessError:
        return []


@contextlib.contextmanager
def loopback(root: Path) -> Iterator[Hosts]:
    """Two nodes on two loopback addresses of this machine."""
    hosts = Hosts(Host("A", "127.0.0.2"), Host("B", "127.0.0.3"), "loopback", ray_env(root), root)
    try:
        yield hosts
    finally:
        stop_all(hosts)


def stop_all(hosts: Hosts) -> None:
    for server in reversed(hosts.started):
        server.stop(timeout=10)


def start_head(hosts: Hosts, *, cpus: int = 1) -> str:
    """A head on A with `cpus` CPUs, once it is up; its address."""
    head = f"{hosts.a.address}:{RAY_PORT if hosts.kind == 'namespaces' else servers.free_port()}"
    hosts.start(
        "ray-head",
        hosts.a,
        [
            str(BIN_DIR / "ray"),
            "start",
            "--head",
            "--node-ip-address",
            hosts.a.address,
            "--port",
            head.rsplit(":", 1)[1],
            "--include-dashboard=false",
            *_node_options(cpus),
        ],
    )
    wait_nodes(hosts, head, 1)
    return head


def start_cluster(hosts: Hosts, *, cpus: int = 1) -> str:
    """A head on A and a node on B, `cpus` CPUs each; the head's address."""
    head = start_head(hosts, cpus=cpus)
    hosts.start(
        "ray-node-b",
        hosts.b,
        [
            str(BIN_DIR / "ray"),
            "start",
            "--address",
            head,
            "--node-ip-address",
            hosts.b.address,
            *_node_options(cpus),
        ],
    )
    wait_nodes(hosts, head, 2)
    return head


def _node_options(cpus: int) -> list[str]:
    return ["--num-cpus", str(cpus), "--block", "--disable-usage-stats"]


# Asks the cluster (as a driver on host A) until it has argv[2] live nodes or argv[3] seconds
# passed; prints the last count. One process for the whole wait: each start imports Ray and
# connects, ~2 s of CPU, which a probe per second spent again and again while node B joined.
NODES_PROBE = """
import sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
count, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while (alive := sum(node["Alive"] for node in ray.nodes())) != count:
    if time.monotonic() > deadline:
        break
    time.sleep(0.25)
print(alive)
"""


def wait_nodes(hosts: Hosts, head: str, count: int, timeout: float = 90) -> None:
    """Until the cluster at `head` has `count` live nodes (asked from host A)."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(deadline - time.monotonic(), 0)
        argv = [sys.executable, "-c", NODES_PROBE, head, str(count), f"{left:.1f}"]
        result = hosts.run(hosts.a, argv, capture_output=True, text=True, timeout=left + 60)
        if result.returncode == 0 and result.stdout.strip().endswith(str(count)):
            return
        if time.monotonic() > deadline:
            logs = "\n".join(server.tail(2000) for server in hosts.started)
            raise AssertionError(f"cluster at {head} has no {count} nodes:\n{result}\n{logs}")
        time.sleep(1)  # the head did not answer yet: connect again


def start_mlflow(hosts: Hosts, folder: Path) -> tuple[str, str]:
    """Start an MLflow server on host A; (its URL, its SQLite store's URI for reading from
    here). `wait_mlflow` waits until it answers."""
    port = 5000 if hosts.kind == "namespaces" else servers.free_port()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    hosts.start(
        "mlflow",
        hosts.a,
        [
            str(BIN_DIR / "mlflow"),
            "server",
            "--host",
            hosts.a.address,
            "--port",
            str(port),
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--workers",
            "1",
            # Its default allows localhost and private addresses, not 127.0.0.2.
            "--allowed-hosts",
            f"{hosts.a.address}:{port},{hosts.a.address}",
        ],
    )
    return f"http://{hosts.a.address}:{port}", store


def wait_mlflow(hosts: Hosts, url: str) -> None:
    probe = (
        "import sys, time, urllib.request\n"
        "for _ in range(600):\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1] + '/health', timeout=2); sys.exit(0)\n"
        "    except Exception: time.sleep(0.2)\n"
        "sys.exit(1)\n"
    )
    result = hosts.run(hosts.a, [sys.executable, "-c", probe, url], capture_output=True)
    assert result.returncode == 0, "\n".join(server.tail() for server in hosts.started)
