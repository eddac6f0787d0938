"""A real `bentoml serve` with two workers spreads each new client's connections over both
(serving.spread): again and again, a fresh client opens a pool of 8 keep-alive connections, sends
photo-like uploads for a while, and both workers serve a fair part of them, as the per-worker
request counts in /metrics say.

The server has a BentoML home of its own: every `bentoml serve` empties the Prometheus folder of
its home when it starts, so a server started later on a shared home wipes this one's /metrics
(and this one would wipe theirs).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from serving import worker_figures
from tests.support import servers, shapes

pytestmark = pytest.mark.slow

POOLS = 24
CONNECTIONS = 8
POOL_SECONDS = 1.0
WORKERS = 2
# What each worker must hold of a pool's connections (read halfway through the pool) and serve
# of its requests. Spread, the connections split 4/4 and each worker serves about half. Before
# serving.spread, 17 pools of 24 failed this: 8/0 or 7/1 splits, 5 of them with 0-2 requests on
# one worker. With 4/4 connections the requests still split by the CPU each worker gets: on 2
# cores shared with a load average of 6, as little as 22%.
MIN_CONNECTIONS = 2
MIN_SHARE = 0.1
# The pools that must have had all their connections open halfway, and so be judged (issue 37:
# at least 20).
MIN_JUDGED = 20


def photo_like_png() -> bytes:
    """A 179x218 RGB upload of a shape drawn in blue on cream, as a phone photo might be."""
    drawing = shapes.draw_shape(2, rng=np.random.default_rng(0))
    return shapes.encode(shapes.in_mode(drawing, "RGB").resize((179, 218)), "PNG")


def figures(base_url: str) -> dict[str, dict[str, float]]:
    """The per-worker series of /metrics: {"requests": {worker: n}, "connections": {...}}."""
    return worker_figures.read(httpx.get(base_url + "/metrics", timeout=10).text)


def requests_by_worker(base_url: str) -> dict[str, float]:
    time.sleep(worker_figures.FIGURES_S + 0.1)  # every worker has written what it served
    return figures(base_url)["requests"]


async def pool(base_url: str, body: bytes, seconds: float) -> tuple[int, dict[str, float]]:
    """A new client with CONNECTIONS keep-alive connections, each sending `body` to
    /predict_image back to back for `seconds`: the requests answered, and the connections each
    worker held halfway through."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    answered = 0
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        end = time.perf_counter() + seconds

        async def sender() -> None:
            nonlocal answered
            while time.perf_counter() < end:
                reply = await client.post("/predict_image", files={"image": ("a.png", body)})
                assert reply.status_code == 200, reply.text
                answered += 1

        async def halfway() -> dict[str, float]:
            await asyncio.sleep(seconds / 2)
            return (await asyncio.to_thread(figures, base_url))["connections"]

        held, *_ = await asyncio.gather(halfway(), *(sender() for _ in range(CONNECTIONS)))
    return answered, held


def wait_for_every_worker(base_url: str, timeout: float = 60.0) -> None:
    """/readyz answers once one worker is up; a worker writes its figures once it accepts."""
    deadline = time.monotonic() + timeout
    while len(figures(base_url)["connections"]) < WORKERS:
        assert time.monotonic() < deadline, f"not every worker accepting: {figures(base_url)}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def spread_served(
    shape_store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    """The shape model served by two workers from a copy of its store."""
    folder = tmp_path_factory.mktemp("spread")
    shutil.copytree(shape_store.home / "models", folder / "bentoml" / "models")
    environment = shape_store.environment(
        BENTOML_HOME=str(folder / "bentoml"),
        SERVING_WORKERS=str(WORKERS),
        MONITOR_DIR=str(folder / "monitoring"),
    )
    with servers.bentoml_serve(environment, log=folder / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        wait_for_every_worker(server.url)
        yield server


def test_fresh_pools_of_keep_alive_connections_reach_both_workers(spread_served) -> None:
    body = photo_like_png()
    workers = [str(index) for index in range(1, WORKERS + 1)]
    pools = []
    for _ in range(POOLS):
        before = requests_by_worker(spread_served.url)
        answered, held = asyncio.run(pool(spread_served.url, body, POOL_SECONDS))
        after = requests_by_worker(spread_served.url)
        served_by = [after.get(worker, 0) - before.get(worker, 0) for worker in workers]
        pools.append((answered, [held.get(worker, 0) for worker in workers], served_by))
    lines = "\n".join(
        f"pool {index:2d}: {answered} answered; workers 1, 2 held {held} connections"
        f" halfway and served {served_by}"
        for index, (answered, held, served_by) in enumerate(pools)
    )
    print(lines)  # shown with `pytest -rP`
    for answered, _, served_by in pools:
        # The counts are the server's own: every answer is in them (and the scrapes, at most 3).
        assert answered <= sum(served_by) <= answered + 3, lines
    # A pool whose connections were not all open halfway met a stalled machine (seen once in CI
    # with a training beside it: 8 answers, 4 of the 8 connections open): it cannot show how
    # connections split. At least MIN_JUDGED of the pools must show it.
    judged = [index for index, (_, held, _) in enumerate(pools) if sum(held) >= CONNECTIONS]
    assert len(judged) >= MIN_JUDGED, f"{len(judged)} pools had every connection open:\n{lines}"
    lopsided = [
        index
        for index in judged
        if min(pools[index][1]) < MIN_CONNECTIONS
        or min(pools[index][2]) < MIN_SHARE * sum(pools[index][2])
    ]
    assert lopsided == [], f"pools {lopsided} were served mostly by one worker:\n{lines}"
