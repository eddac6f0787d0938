"""Serving load: our BentoML service vs `mlflow models serve` on the same registered version.

    python bench/serve_load.py                          # champion of params.yaml's model
    python bench/serve_load.py --duration 10 --concurrency 1,8,32 --batch-size 256
    python bench/serve_load.py --skip-mlflow --json out.json
    SERVING_WORKERS=2 python bench/serve_load.py --workers 2

Packages the registry's champion into the BentoML store (`serving.package`), starts
`bentoml serve serving.service:Classifier` with `BENTO_MODEL=<tag>` and `mlflow models serve -m
models:/<name>/<version> --env-manager local`, both on 127.0.0.1 with free ports and the same
number of worker processes, and checks that both give the same answers. Then it drives each with
a bounded load: `concurrency` workers in this process each send requests back to back (asyncio +
aiohttp, bodies encoded once), single images and batches, and prints req/s, images/s, p50 and p99
latency per cell, the ratio ours / MLflow, and the goals next to the figures:

    >= 300 single-image req/s at concurrency 8 with p99 <= 25 ms   (POST /predict_image, a PNG)
    >= 3x the MLflow server's single-image throughput at concurrency 8
    >= 5,000 images/s through /predict in batches                  (best concurrency)
    ready <= 8 s after start                                       (process start -> /readyz 200)

Requests: ours single = multipart `image` (PNG of a test image), ours batch = `/predict` JSON
`{"pixels": uint8 (N, 28, 28)}`; MLflow single and batch = `/invocations` JSON `{"inputs": float
(N, 28, 28)}` (the pyfunc signature is float32; values are sent with 4 decimals). The client runs
on the same cores as the server, so every figure is a lower bound for a server with its own cores;
each cell also shows the cores busy in its window: server (its whole process tree), client, other
work on the machine (anything but ~0 there means the figures are not representative).
`--service module:Class` starts another BentoML service instead (a variant to compare).
Environment: MLFLOW_TRACKING_URI (default: the repository's SQLite store), REGISTERED_MODEL,
BENTOML_HOME (default `<repo>/.bentoml`, as `make serve` uses).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SINGLE_RPS = 300.0
GOAL_SINGLE_P99_MS = 25.0
GOAL_RATIO = 3.0
GOAL_BATCH_IMAGES_PER_S = 5000.0
GOAL_READY_S = 8.0
GOAL_CONCURRENCY = 8
# More than this many cores busy with other work makes the figures unrepresentative.
BUSY_CORES = 0.2
MULTIPART_BOUNDARY = "serve-load-boundary-7c1f9b"
KINDS = ("single", "batch")
SERVICE = "serving.service:Classifier"


@dataclass(frozen=True)
class Request:
    """One pre-encoded request: the same bytes are sent again and again."""

    path: str
    body: bytes
    content_type: str
    images: int


@dataclass
class Cell:
    """The load figures of one (server, endpoint, concurrency)."""

    server: str
    endpoint: str
    kind: str
    concurrency: int
    images_per_request: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)
    # Average cores busy during the window: the server's processes, this client, everything else.
    cpu: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON data (no per-request latencies)."""
        return {
            "server": self.server,
            "endpoint": self.endpoint,
            "kind": self.kind,
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": self.requests_per_s,
            "images_per_s": self.images_per_s,
            "p50_ms": self.percentile(0.50) if self.latencies_ms else None,
            "p99_ms": self.percentile(0.99) if self.latencies_ms else None,
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "cpu_cores": self.cpu,
            "server_cpu_ms_per_request": (
                1000 * self.cpu["server"] / self.requests_per_s
                if self.cpu and self.requests
                else None
            ),
            "error_samples": self.error_samples,
        }


@dataclass
class Server:
    """A server process we started: its own session, so the whole process group can be stopped."""

    name: str
    process: subprocess.Popen
    base_url: str
    log_path: Path
    started: float
    ready_s: float | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- the machine ---------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, core counts and the versions of what serves and drives the load."""
    versions = {}
    for package in ("bentoml", "mlflow", "tensorflow-cpu", "tensorflow", "keras", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    lscpu: dict[str, str] = {}
    if shutil.which("lscpu"):
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            key, _, value = line.partition(":")
            lscpu[key.strip()] = value.strip()
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "python": platform.python_version(),
        "versions": versions,
    }


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


def process_tree(root: int, table: dict[int, tuple[int, int, float]]) -> list[int]:
    """`root` and all its descendants. BentoML's workers run in sessions of their own, so the
    tree, not the session or process group, is what a server is."""
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


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds used so far by each live process of `root`'s tree (a server's)."""
    table = process_table()
    return {pid: table[pid][2] for pid in process_tree(root, table)}


def cpu_snapshot(server_pid: int) -> CpuSnapshot:
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


# --- request bodies ------------------------------------------------------------------------------


def load_images(path: Path, count: int) -> tuple[np.ndarray, str]:
    """`count` test images as float32 (N, 28, 28) in [0, 1], and where they came from.

    Synthetic blobs stand in when the prepared test split is missing: throughput does not depend
    on the pixels, only the answers' agreement is checked.
    """
    if path.exists():
        with np.load(path) as data:
            images = np.asarray(data["x"][:count], dtype=np.float32)
        if len(images) < count:
            images = np.resize(images, (count, 28, 28))
        return images.reshape(count, 28, 28), str(path)
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:28, 0:28]
    images = np.empty((count, 28, 28), np.float32)
    for index in range(count):
        centre = rng.uniform(9, 19, size=2)
        radius = rng.uniform(4, 9, size=2)
        blob = ((rows - centre[0]) / radius[0]) ** 2 + ((columns - centre[1]) / radius[1]) ** 2
        images[index] = np.clip(1.2 - blob, 0, 1) * rng.uniform(0.6, 1.0)
    return images, "synthetic blobs"


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field_name: str, filename: str, content: bytes, content_type: str) -> bytes:
    """A multipart/form-data body with one file field, boundary MULTIPART_BOUNDARY."""
    head = (
        f"--{MULTIPART_BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()


def ours_requests(images: np.ndarray) -> dict[str, Request]:
    """Single = /predict_image with a PNG of the first image; batch = /predict with all of them."""
    batch = json.dumps({"pixels": to_uint8(images).tolist()}, separators=(",", ":")).encode()
    return {
        "single": Request(
            "/predict_image",
            multipart("image", "image.png", png_bytes(images[0]), "image/png"),
            f"multipart/form-data; boundary={MULTIPART_BOUNDARY}",
            1,
        ),
        "batch": Request("/predict", batch, "application/json", len(images)),
    }


def mlflow_requests(images: np.ndarray) -> dict[str, Request]:
    """MLflow's scoring server takes `{"inputs": ...}` tensors; the signature says float32."""

    def body(batch: np.ndarray) -> bytes:
        return json.dumps(
            {"inputs": np.round(batch.astype(np.float64), 4).tolist()}, separators=(",", ":")
        ).encode()

    return {
        "single": Request("/invocations", body(images[:1]), "application/json", 1),
        "batch": Request("/invocations", body(images), "application/json", len(images)),
    }


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ours_command(bin_dir: Path, port: int, service: str = SERVICE) -> list[str]:
    return [
        str(bin_dir / "bentoml"),
        "serve",
        service,
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


def mlflow_command(bin_dir: Path, port: int, *, model_uri: str, workers: int) -> list[str]:
    return [
        str(bin_dir / "mlflow"),
        *("models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
    ]


def start_server(
    name: str, port: int, command: list[str], env: dict[str, str], log_path: Path
) -> Server:
    """Start `command` in a session of its own, output to `log_path`; the clock starts here."""
    with log_path.open("wb") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log_path, started)


def wait_ready(server: Server, health_path: str, timeout_s: float) -> float:
    """Seconds from process start until `health_path` answers 200; raises if it never does."""
    started = server.started
    url = server.base_url + health_path
    while True:
        now = time.perf_counter()
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} before it was ready;"
                f" its log ({server.log_path}) ends:\n{server.log_tail()}"
            )
        if now - started > timeout_s:
            raise RuntimeError(
                f"{server.name} not ready after {timeout_s:.0f} s; its log ends:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    server.ready_s = time.perf_counter() - started
                    return server.ready_s
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)


def stop_server(server: Server, timeout_s: float = 15.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of its tree is left.

    `bentoml serve` stops its workers on SIGTERM, but they live in sessions of their own, so if
    it has to be killed they are found through the process tree noted before the SIGTERM.
    """
    table = process_table()
    tree = {pid: table[pid][1] for pid in process_tree(server.process.pid, table)}
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{server.name} ignored SIGTERM for {timeout_s:.0f} s: SIGKILL", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        # The same pid with the same start time is the same process, not a reused pid.
        table = process_table()
        left = [pid for pid, started in tree.items() if table.get(pid, (0, None))[1] == started]
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def server_env(*, bentoml_home: str, tracking_uri: str, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # `mlflow models serve` execs `uvicorn` by name, so the virtualenv's bin must come first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["BENTOML_HOME"] = bentoml_home
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


# --- load ----------------------------------------------------------------------------------------


async def post_once(base_url: str, request: Request) -> tuple[int, bytes]:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(
            base_url + request.path,
            data=request.body,
            headers={"Content-Type": request.content_type},
        ) as response,
    ):
        return response.status, await response.read()


async def drive(
    *,
    server: str,
    kind: str,
    base_url: str,
    server_pid: int,
    request: Request,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    timeout_s: float,
) -> Cell:
    """`concurrency` workers send `request` back to back for `warmup_s + duration_s`.

    Counted: requests that complete inside the measuring window (after the warm-up), whatever
    their start; so throughput is completions per second and nothing is counted twice.
    """
    import aiohttp

    cell = Cell(server, request.path, kind, concurrency, request.images, duration_s)
    errors: Counter[str] = Counter()
    headers = {"Content-Type": request.content_type}
    url = base_url + request.path
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        begin = time.perf_counter()
        window_start = begin + warmup_s
        window_end = window_start + duration_s

        # Connections opened in one burst can all be accepted by one server worker process (each
        # accepts what is queued); opening them a little apart lets the kernel spread them.
        stagger = min(0.02, warmup_s / (2 * concurrency))

        async def worker(index: int) -> None:
            await asyncio.sleep(index * stagger)
            while True:
                sent = time.perf_counter()
                if sent >= window_end:
                    return
                try:
                    async with session.post(url, data=request.body, headers=headers) as response:
                        payload = await response.read()
                        failure = (
                            None
                            if 200 <= response.status < 300
                            else f"HTTP {response.status}: {payload[:200]!r}"
                        )
                except (TimeoutError, aiohttp.ClientError) as error:
                    failure = f"{type(error).__name__}: {error}"
                done = time.perf_counter()
                if not window_start <= done <= window_end:
                    continue
                if failure is None:
                    cell.requests += 1
                    cell.latencies_ms.append((done - sent) * 1000)
                else:
                    cell.errors += 1
                    errors[failure] += 1

        async def measure_cpu() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            first = cpu_snapshot(server_pid)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cell.cpu = cpu_between(first, cpu_snapshot(server_pid))

        await asyncio.gather(measure_cpu(), *(worker(index) for index in range(concurrency)))
    cell.error_samples = [f"{count} x {text}" for text, count in errors.most_common(5)]
    return cell


# --- answers -------------------------------------------------------------------------------------


def ours_labels(status: int, payload: bytes, *, many: bool) -> list[int]:
    if status != 200:
        raise RuntimeError(f"our service answered {status}: {payload[:300]!r}")
    answer = json.loads(payload)
    return [int(item["label"]) for item in answer] if many else [int(answer["label"])]


def mlflow_labels(status: int, payload: bytes) -> list[int]:
    if status != 200:
        raise RuntimeError(f"the MLflow server answered {status}: {payload[:300]!r}")
    predictions = np.asarray(json.loads(payload)["predictions"], dtype=np.float64)
    return [int(label) for label in predictions.argmax(axis=1)]


def check_answers(
    answers: dict[str, list[int]], *, true_labels: np.ndarray | None, classes: int
) -> list[str]:
    """Lines describing the answers' agreement; raises when the two servers disagree."""
    lines = []
    for key, labels in answers.items():
        if any(not 0 <= label < classes for label in labels):
            raise RuntimeError(f"{key}: labels outside [0, {classes}): {labels[:10]}")
    if "mlflow batch" in answers:
        ours, theirs = np.asarray(answers["ours batch"]), np.asarray(answers["mlflow batch"])
        agreement = float((ours == theirs).mean())
        lines.append(
            f"ours /predict vs MLflow /invocations, {len(ours)} images: same argmax for"
            f" {agreement:.1%}"
        )
        # MLflow gets the pixels rounded to 4 decimals; only a near-tie may flip, never many.
        if agreement < 0.99 or answers["ours batch"][0] != answers["mlflow single"][0]:
            raise RuntimeError(
                "the two servers disagree: is it the same model version? " + "; ".join(lines)
            )
    image_label, pixel_label = answers["ours single"][0], answers["ours batch"][0]
    lines.append(
        f"ours /predict_image (PNG, re-centred by preprocessing) says class {image_label},"
        f" /predict on the raw pixels says {pixel_label}"
        + ("" if image_label == pixel_label else " (the upload path re-crops and rescales)")
    )
    if true_labels is not None:
        accuracy = float((np.asarray(answers["ours batch"]) == true_labels).mean())
        lines.append(
            f"accuracy of the served model on the {len(true_labels)} images: {accuracy:.1%}"
        )
    return lines


# --- report --------------------------------------------------------------------------------------


def ratio_for(cell: Cell, cells: list[Cell]) -> float | None:
    """Ours / MLflow images/s for the same kind of request and concurrency."""
    if cell.server != "ours":
        return None
    for other in cells:
        if (other.server, other.kind, other.concurrency) == ("mlflow", cell.kind, cell.concurrency):
            return cell.images_per_s / other.images_per_s if other.images_per_s else None
    return None


def cpu_text(cell: Cell) -> str:
    if not cell.cpu:
        return "n/a"
    return f"{cell.cpu['server']:.2f} / {cell.cpu['client']:.2f} / {cell.cpu['other']:.2f}"


def table(cells: list[Cell]) -> str:
    lines = [
        "| server | endpoint | images/request | concurrency | req/s | images/s | p50 ms | p99 ms"
        " | errors | ours / MLflow | cores: server / client / other |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        ratio = ratio_for(cell, cells)
        lines.append(
            f"| {'BentoML (ours)' if cell.server == 'ours' else 'mlflow models serve'}"
            f" | `{cell.endpoint}` | {cell.images_per_request} | {cell.concurrency}"
            f" | {cell.requests_per_s:,.0f} | {cell.images_per_s:,.0f}"
            f" | {cell.percentile(0.5):.1f} | {cell.percentile(0.99):.1f} | {cell.errors}"
            f" | {'' if ratio is None else f'{ratio:.2f}x'} | {cpu_text(cell)} |"
        )
    return "\n".join(lines)


def find(cells: list[Cell], server: str, kind: str, concurrency: int) -> Cell | None:
    for cell in cells:
        if (cell.server, cell.kind, cell.concurrency) == (server, kind, concurrency):
            return cell
    return None


def goals(cells: list[Cell], ready: dict[str, float]) -> list[dict[str, Any]]:
    """Each goal with its measured figure and PASS / MISS (or n/a when not measured)."""
    results = []

    def add(name: str, passed: bool | None, figure: str) -> None:
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        results.append({"goal": name, "verdict": verdict, "measured": figure})

    single = find(cells, "ours", "single", GOAL_CONCURRENCY)
    add(
        f">= {GOAL_SINGLE_RPS:.0f} single-image req/s at concurrency {GOAL_CONCURRENCY},"
        f" p99 <= {GOAL_SINGLE_P99_MS:.0f} ms",
        None
        if single is None
        else (
            single.requests_per_s >= GOAL_SINGLE_RPS
            and single.percentile(0.99) <= GOAL_SINGLE_P99_MS
            and single.errors == 0
        ),
        "not measured"
        if single is None
        else f"{single.requests_per_s:,.0f} req/s, p99 {single.percentile(0.99):.1f} ms,"
        f" {single.errors} errors",
    )
    ratio = None if single is None else ratio_for(single, cells)
    add(
        f">= {GOAL_RATIO:.0f}x MLflow's single-image throughput at concurrency {GOAL_CONCURRENCY}",
        None if ratio is None else ratio >= GOAL_RATIO,
        "not measured" if ratio is None else f"{ratio:.2f}x",
    )
    batches = [cell for cell in cells if (cell.server, cell.kind) == ("ours", "batch")]
    best = max(batches, key=lambda cell: cell.images_per_s, default=None)
    add(
        f">= {GOAL_BATCH_IMAGES_PER_S:,.0f} images/s through /predict in batches",
        None if best is None else best.images_per_s >= GOAL_BATCH_IMAGES_PER_S,
        "not measured"
        if best is None
        else f"{best.images_per_s:,.0f} images/s (batches of {best.images_per_request},"
        f" concurrency {best.concurrency})",
    )
    figure = f"{ready['ours']:.1f} s" if "ours" in ready else "not measured"
    if "mlflow" in ready:
        figure += f" (MLflow: {ready['mlflow']:.1f} s to /ping)"
    add(
        f"ready <= {GOAL_READY_S:.0f} s after start (/readyz 200)",
        None if "ours" not in ready else ready["ours"] <= GOAL_READY_S,
        figure,
    )
    return results


# --- main ----------------------------------------------------------------------------------------


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency values must be >= 1, got {text!r}")
    return values


def parse_kinds(text: str) -> list[str]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(KINDS)}, got {text!r}")
    return [kind for kind in KINDS if kind in kinds]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registered-model", help="default: params.yaml's (REGISTERED_MODEL)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument(
        "--concurrency",
        type=parse_concurrency,
        default=[1, 8, 32],
        help="requests in flight, one cell each (default 1,8,32)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch request")
    parser.add_argument(
        "--kinds",
        type=parse_kinds,
        default=list(KINDS),
        help="which requests to time: single, batch or single,batch (default)",
    )
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("SERVING_WORKERS", 1)),
        help="worker processes of each server (SERVING_WORKERS for ours, -w for MLflow)",
    )  # fmt: skip
    parser.add_argument(
        "--service",
        default=SERVICE,
        help="the BentoML service to start (a variant to compare; put its folder on PYTHONPATH)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "prepared" / "test.npz",
        help="test split with x (N, 28, 28) floats in [0, 1] and labels; synthetic if missing",
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1024:
        parser.error("--batch-size must be in [1, 1024] (the service's MAX_BATCH_ITEMS default)")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM becomes what Ctrl-C is, so the `finally` that stops the servers runs.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Package, start, check, load and stop; returns everything measured."""
    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    from pipeline import tracking
    from serving import package

    tracking_uri = tracking.tracking_uri()
    name = args.registered_model or package.default_registered_model(args.params)
    info = machine()
    print(f"# Serving load: {name}@{args.alias}\n")
    print(
        f"- machine: {info['cpu']}, os.cpu_count() = {info['cpu_count']}"
        f" ({info['usable_cpus']} usable; lscpu: {info['cores_per_socket']} cores/socket,"
        f" {info['threads_per_core']} threads/core); Python {info['python']}"
    )
    print("- versions: " + ", ".join(f"{key} {value}" for key, value in info["versions"].items()))
    info["background_cores"] = background_load()
    print(
        f"- background load before start: {info['background_cores']:.2f} cores busy with other"
        " work"
        + (
            "; WARNING: the figures below share the machine with it (see the 'other' cores)"
            if info["background_cores"] > BUSY_CORES
            else ""
        )
    )

    started = time.perf_counter()
    tag = package.package(registered_model=name, tracking_uri=tracking_uri, alias=args.alias)
    import bentoml

    stored = dict(bentoml.models.get(tag).info.metadata)
    model_uri = stored.get("model_uri") or f"models:/{name}/{tag.rsplit(':v', 1)[-1]}"
    classes = len(stored.get("class_names") or []) or 10
    print(
        f"- model: {model_uri} (BentoML tag {tag}, packaged in"
        f" {time.perf_counter() - started:.1f} s); tracking {tracking_uri}; BENTOML_HOME"
        f" {os.environ['BENTOML_HOME']}"
    )

    images, source = load_images(args.data, args.batch_size)
    true_labels = None
    if args.data.exists():
        with np.load(args.data) as data:
            if "labels" in data and len(data["labels"]) >= args.batch_size:
                true_labels = np.asarray(data["labels"][: args.batch_size])
    requests = {"ours": ours_requests(images)}
    if not args.skip_mlflow:
        requests["mlflow"] = mlflow_requests(images)
    print(
        f"- requests: {source}; single = 1 image, batch = {args.batch_size} images;"
        f" {args.duration:g} s measured after {args.warmup:g} s warm-up per cell; concurrency ="
        f" requests in flight"
    )
    print(
        f"- each server runs {args.workers} worker process(es) (SERVING_WORKERS={args.workers},"
        f" mlflow -w {args.workers}); the load generator (1 process, asyncio + aiohttp) shares the"
        f" {info['usable_cpus']} cores with the server under test; MLflow's server idles while"
        " ours is measured, and ours is stopped before MLflow's is measured"
    )

    bin_dir = Path(sys.executable).parent
    log_dir = Path(tempfile.mkdtemp(prefix="serve_load-"))
    servers: dict[str, Server] = {}
    cells: list[Cell] = []
    ready: dict[str, float] = {}
    agreement: list[str] = []
    try:
        ours_port = free_port()
        servers["ours"] = start_server(
            "ours",
            ours_port,
            ours_command(bin_dir, ours_port, args.service),
            server_env(
                bentoml_home=os.environ["BENTOML_HOME"],
                tracking_uri=tracking_uri,
                extra={"BENTO_MODEL": tag, "SERVING_WORKERS": str(args.workers)},
            ),
            log_dir / "bentoml.log",
        )
        ready["ours"] = wait_ready(servers["ours"], "/readyz", args.ready_timeout)
        print(f"- ours ready in {ready['ours']:.2f} s ({servers['ours'].base_url})")
        if not args.skip_mlflow:
            mlflow_port = free_port()
            servers["mlflow"] = start_server(
                "mlflow",
                mlflow_port,
                mlflow_command(bin_dir, mlflow_port, model_uri=model_uri, workers=args.workers),
                server_env(
                    bentoml_home=os.environ["BENTOML_HOME"], tracking_uri=tracking_uri, extra={}
                ),
                log_dir / "mlflow.log",
            )
            ready["mlflow"] = wait_ready(servers["mlflow"], "/ping", args.ready_timeout)
            print(f"- MLflow ready in {ready['mlflow']:.2f} s ({servers['mlflow'].base_url})")

        answers: dict[str, list[int]] = {}
        for kind in ("single", "batch"):
            status, payload = asyncio.run(
                post_once(servers["ours"].base_url, requests["ours"][kind])
            )
            answers[f"ours {kind}"] = ours_labels(status, payload, many=kind == "batch")
            if "mlflow" in servers:
                status, payload = asyncio.run(
                    post_once(servers["mlflow"].base_url, requests["mlflow"][kind])
                )
                answers[f"mlflow {kind}"] = mlflow_labels(status, payload)
        agreement = check_answers(answers, true_labels=true_labels, classes=classes)
        for line in agreement:
            print(f"- check: {line}")
        print()

        for server_name in list(servers):
            for kind in args.kinds:
                for concurrency in args.concurrency:
                    cell = asyncio.run(
                        drive(
                            server=server_name,
                            kind=kind,
                            base_url=servers[server_name].base_url,
                            server_pid=servers[server_name].process.pid,
                            request=requests[server_name][kind],
                            concurrency=concurrency,
                            warmup_s=args.warmup,
                            duration_s=args.duration,
                            timeout_s=args.request_timeout,
                        )
                    )
                    cells.append(cell)
                    spread = " + ".join(map(str, cell.cpu.get("server_processes", [])))
                    print(
                        f"  {server_name:6} {cell.endpoint:15} x{cell.images_per_request:<4}"
                        f" c={concurrency:<3} {cell.requests_per_s:8,.0f} req/s"
                        f" {cell.images_per_s:9,.0f} images/s  p50 {cell.percentile(0.5):6.1f} ms"
                        f"  p99 {cell.percentile(0.99):6.1f} ms  errors {cell.errors}"
                        f"  cores: {cpu_text(cell)}"
                        f" (by process: {spread})",
                        flush=True,
                    )
                    for sample in cell.error_samples:
                        print(f"      error: {sample}")
            # Stop each server once measured, so it cannot take CPU from the next one.
            stop_server(servers[server_name])
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short; each stop is bounded.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        for server in servers.values():
            stop_server(server)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)

    print()
    print(table(cells))
    print()
    verdicts = goals(cells, ready)
    for goal in verdicts:
        print(f"- **{goal['verdict']}** {goal['goal']}: {goal['measured']}")
    print(
        f"\nClient and server share {info['usable_cpus']} cores; {args.workers} worker process(es)"
        f" per server. Server logs: {log_dir}"
    )
    return {
        "machine": info,
        "model": {"uri": model_uri, "bento_tag": tag, "tracking_uri": tracking_uri},
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "ready_s": ready,
        "checks": agreement,
        "cells": [cell.summary() for cell in cells],
        "goals": verdicts,
        "logs": str(log_dir),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run(args)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: servers stopped") from None
    except RuntimeError as error:
        raise SystemExit(f"serve_load: {error}") from None
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"raw figures: {args.json}")


if __name__ == "__main__":
    main()
