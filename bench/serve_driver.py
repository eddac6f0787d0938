"""The load driver: pre-encoded requests sent back to back by N asyncio workers, one cell each.

A cell is one (server, kind of request, concurrency): `concurrency` workers in this process each
send the same bytes again and again for a warm-up and then a measured window (aiohttp on one
event loop, so the client costs as little CPU as Python allows). Counted are the requests that
complete inside the window, whatever their start, so throughput is completions per second and
nothing is counted twice; a non-2xx answer or a client error counts as an error, never a crash.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench import serve_servers
from tests.support import servers

ERROR_SAMPLES = 5


@dataclass(frozen=True)
class Request:
    """One pre-encoded request: the same bytes are sent again and again."""

    path: str
    body: bytes
    content_type: str
    images: int
    extra_headers: tuple[tuple[str, str], ...] = ()
    method: str = "POST"

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, **dict(self.extra_headers)}


@dataclass
class Cell:
    """The load figures of one (server, kind of request, concurrency)."""

    server: str
    kind: str
    endpoint: str
    concurrency: int
    images_per_request: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)
    # Average cores busy during the window: the server's processes, this client, everything else.
    cpu: dict[str, Any] = field(default_factory=dict)
    # Resident bytes of the server's process tree at the end of the window ("rss", "pss").
    memory: dict[str, int] = field(default_factory=dict)
    # Why the cell was not driven: its endpoint failed the answer check before the load.
    failure: str | None = None
    # Requests each server worker read during the cell, warm-up included (bench.serve_workers);
    # None where the server does not say (MLflow's).
    worker_requests: dict[str, int] | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    @property
    def ok(self) -> bool:
        """Driven, answered, and without a single error."""
        return self.failure is None and self.requests > 0 and self.errors == 0

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        """Server CPU milliseconds per completed request, over the measured window."""
        if not self.cpu or not self.requests:
            return None
        return 1000 * self.cpu["server"] / self.requests_per_s

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON data (no per-request latencies)."""
        measured = bool(self.latencies_ms)
        return {
            "server": self.server,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "failure": self.failure,
            "requests_per_s": self.requests_per_s,
            "images_per_s": self.images_per_s,
            "p50_ms": self.percentile(0.50) if measured else None,
            "p99_ms": self.percentile(0.99) if measured else None,
            "mean_ms": statistics.fmean(self.latencies_ms) if measured else None,
            "cpu_cores": self.cpu,
            "server_cpu_ms_per_request": self.server_cpu_ms_per_request,
            "server_memory_bytes": self.memory,
            "worker_requests": self.worker_requests,
            "error_samples": self.error_samples,
        }


async def post_once(
    base_url: str, request: Request, *, timeout_s: float = 60.0
) -> tuple[int, dict[str, str], bytes]:
    """Send `request` once: status, response headers and body (to check the answers); a client
    error (refused, timed out) is status 0 with the error as the body."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(
                request.method,
                base_url + request.path,
                data=request.body or None,
                headers=request.headers,
            ) as response,
        ):
            return response.status, dict(response.headers), await response.read()
    except (TimeoutError, aiohttp.ClientError) as error:
        return 0, {}, f"{type(error).__name__}: {error}".encode()


async def get_once(base_url: str, path: str, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET `path` once: status and body; a refused connection is status 0."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(base_url + path) as response,
        ):
            return response.status, await response.read()
    except (TimeoutError, aiohttp.ClientError) as error:
        return 0, f"{type(error).__name__}: {error}".encode()


async def _send(session: Any, url: str, request: Request) -> str | None:
    """One request; None when it succeeded, else what went wrong (for the error samples)."""
    import aiohttp

    try:
        async with session.request(
            request.method, url, data=request.body or None, headers=request.headers
        ) as response:
            payload = await response.read()
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}: {payload[:200]!r}"
    except (TimeoutError, aiohttp.ClientError) as error:
        return f"{type(error).__name__}: {error}"


async def drive(
    cell: Cell,
    *,
    base_url: str,
    server_pid: int,
    request: Request,
    warmup_s: float,
    timeout_s: float,
) -> Cell:
    """Fill `cell`: `cell.concurrency` workers send `request` back to back for `warmup_s` and
    then `cell.duration_s` measured seconds, while the server's CPU and memory are sampled."""
    import aiohttp

    errors: Counter[str] = Counter()
    url = base_url + request.path
    connector = aiohttp.TCPConnector(limit=cell.concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        window_start = time.perf_counter() + warmup_s
        window_end = window_start + cell.duration_s

        # All at once, as a client's pool opens its connections: spreading them over the server's
        # workers is the server's job (serving.spread).
        async def worker() -> None:
            while (sent := time.perf_counter()) < window_end:
                failure = await _send(session, url, request)
                done = time.perf_counter()
                if not window_start <= done <= window_end:
                    continue
                if failure is None:
                    cell.requests += 1
                    cell.latencies_ms.append((done - sent) * 1000)
                else:
                    cell.errors += 1
                    errors[failure] += 1

        async def measure() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            first = serve_servers.cpu_snapshot(server_pid)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cell.cpu = serve_servers.cpu_between(first, serve_servers.cpu_snapshot(server_pid))
            cell.memory = serve_servers.memory(server_pid)

        await asyncio.gather(measure(), *(worker() for _ in range(cell.concurrency)))
    cell.error_samples = [f"{count} x {text}" for text, count in errors.most_common(ERROR_SAMPLES)]
    return cell


def measure(
    name: str,
    server: servers.Server,
    requests: Mapping[str, Request],
    *,
    concurrencies: list[int],
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    failed: Mapping[str, str],
    report: Callable[[Cell], None],
    count: Callable[[Callable[[], None]], dict[str, int]] | None = None,
) -> list[Cell]:
    """Every (kind, concurrency) cell of one server, each passed to `report` once measured.

    A kind in `failed` (its check request got an error) is recorded as a failed cell, not loaded.
    `count(run)`, where given, runs a cell's load and returns the requests each server worker
    read meanwhile (bench.serve_workers.counted).
    """
    cells = []
    for kind, request in requests.items():
        for concurrency in concurrencies:
            cell = Cell(name, kind, request.path, concurrency, request.images, duration_s)
            if kind in failed:
                cell.failure = failed[kind]
            else:
                load = drive(
                    cell,
                    base_url=server.url,
                    server_pid=server.pid,
                    request=request,
                    warmup_s=warmup_s,
                    timeout_s=timeout_s,
                )
                if count is None:
                    asyncio.run(load)
                else:
                    cell.worker_requests = count(lambda load=load: asyncio.run(load))
            report(cell)
            cells.append(cell)
    return cells
