"""How our server's workers share the load: requests per worker, fresh client pools, the goal.

Each worker of our service writes the requests it has read into `/metrics` as
`classifier_worker_requests_total{worker="<index>"}` every quarter second
(`serving.worker_figures`). A cell's count per worker is the difference between a scrape before its
warm-up and one after its window, each taken once the workers have written their figures, so
it covers warm-up and window. The fresh-start check opens a new client with a pool of
`GOAL_CONCURRENCY` keep-alive connections again and again (`--fresh-starts` times), since which
worker a new pool's connections land on is what varies; the goal asks every worker to serve at
least `GOAL_SHARE` of the requests of every such pool and of every c=8 cell.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable

from bench.serve_driver import Cell, Request, drive
from bench.serve_payloads import SINGLE_IMAGE_KINDS
from bench.serve_report import GOAL_CONCURRENCY, Goal, judged, shares
from serving import worker_figures

GOAL_SHARE = 0.25
# Long enough for every worker to have written the requests it read into /metrics.
SETTLE_S = worker_figures.FIGURES_S + 0.1
FRESH_WARMUP_S = 0.25
FRESH_DURATION_S = 1.0


def scrape(base_url: str, *, timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
    """{"requests": {worker: n}, "connections": {worker: n}} from our server's /metrics."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=timeout_s) as response:
        return worker_figures.read(response.read().decode())


def requests_by_worker(base_url: str) -> dict[str, int]:
    """Requests each worker has read so far, once the workers have written their figures."""
    time.sleep(SETTLE_S)
    return {worker: int(value) for worker, value in scrape(base_url)["requests"].items()}


def wait_for_workers(base_url: str, workers: int, *, timeout_s: float) -> float | None:
    """Seconds until `workers` workers write their figures (each is then accepting connections;
    `/readyz` answers as soon as one is), or None if they do not within `timeout_s`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            if len(scrape(base_url)["connections"]) >= workers:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.1)
    return None


def counted(base_url: str, run: Callable[[], None]) -> dict[str, int]:
    """Requests each worker read while `run()` ran."""
    before = requests_by_worker(base_url)
    run()
    after = requests_by_worker(base_url)
    return {worker: after[worker] - before.get(worker, 0) for worker in sorted(after)}


def fresh_starts(
    base_url: str, server_pid: int, request: Request, *, count: int, timeout_s: float
) -> list[Cell]:
    """`count` fresh clients, each with its own pool of GOAL_CONCURRENCY connections sending
    `request` for FRESH_DURATION_S after FRESH_WARMUP_S, each cell with its count per worker."""
    cells = []
    for _ in range(count):
        cell = Cell(
            "ours", "fresh", request.path, GOAL_CONCURRENCY, request.images, FRESH_DURATION_S
        )
        load = drive(
            cell,
            base_url=base_url,
            server_pid=server_pid,
            request=request,
            warmup_s=FRESH_WARMUP_S,
            timeout_s=timeout_s,
        )
        cell.worker_requests = counted(base_url, lambda load=load: asyncio.run(load))
        cells.append(cell)
    return cells


def smallest_share(by_worker: dict[str, int] | None, workers: int) -> float:
    """The smallest worker's part of a cell's requests; a worker missing from the counts (it
    never wrote a figure) served none."""
    found = shares(by_worker)
    return min(found.values()) if len(found) >= workers else 0.0


def fresh_text(cells: list[Cell], workers: int) -> str:
    """One line: the smallest worker share of each fresh start."""
    lowest = [smallest_share(cell.worker_requests, workers) for cell in cells]
    return (
        f"  ours   fresh     {cells[0].endpoint:16} c={GOAL_CONCURRENCY} x {len(cells)} pools,"
        " smallest worker share in each: " + " ".join(f"{value:.0%}" for value in lowest)
    )


def spread_goal(cells: list[Cell], fresh: list[Cell], workers: int) -> Goal:
    """Every worker serves at least GOAL_SHARE of the requests of each c=8 cell and pool."""
    text = (
        f"every worker serves >= {GOAL_SHARE:.0%} of the requests of every c={GOAL_CONCURRENCY}"
        " cell and every fresh pool"
    )
    judged_cells = [
        cell
        for cell in [*cells, *fresh]
        if cell.server == "ours" and cell.concurrency == GOAL_CONCURRENCY and cell.ok
    ]
    if workers < 2 or not judged_cells:
        return Goal(text, "n/a", "one worker" if workers < 2 else "not measured")
    lowest = [smallest_share(cell.worker_requests, workers) for cell in judged_cells]
    short = sum(value < GOAL_SHARE for value in lowest)
    measured = f"smallest share {min(lowest):.0%} over {len(judged_cells)} cells"
    measured += f" ({len(fresh)} fresh pools)"
    return judged(text, measured, [f"{short} cell(s) below {GOAL_SHARE:.0%}" if short else ""])


def all_accepting(base_url: str, workers: int, *, timeout_s: float) -> None:
    """Wait until every worker accepts connections, and say when (or that some never did)."""
    waited = wait_for_workers(base_url, workers, timeout_s=timeout_s)
    if waited is None:
        print(f"- WARNING: not all {workers} workers wrote figures within {timeout_s:g} s")
    else:
        print(f"- all {workers} workers accepting {waited:.2f} s after /readyz answered")


def check_fresh_starts(
    base_url: str,
    server_pid: int,
    requests: dict[str, Request],
    failed: dict[str, str],
    *,
    count: int,
    workers: int,
    timeout_s: float,
) -> list[Cell]:
    """The fresh-start check with the first single-image kind that answered its check; none
    with one worker, `count` 0, or no such kind."""
    kind = next((k for k in SINGLE_IMAGE_KINDS if k in requests and k not in failed), None)
    if workers < 2 or count < 1 or kind is None:
        return []
    cells = fresh_starts(base_url, server_pid, requests[kind], count=count, timeout_s=timeout_s)
    print(fresh_text(cells, workers))
    return cells
