"""Each worker's figures in /metrics: the requests it has read and the connections it holds.

Written by every worker of `bentoml serve` every `FIGURES_S` seconds from uvicorn's own counts
(`start`, called by `serving.spread` once uvicorn has started), labelled with the worker's index:

    classifier_worker_requests_total{worker="1"} 812.0
    classifier_worker_connections{worker="1"} 4.0

so that an operator (and the bench, and the tests, through `read`) can see how the load is
spread. Nothing is counted per request: uvicorn counts requests anyway.
"""

from __future__ import annotations

import functools
import re
from typing import Any

FIGURES_S = 0.25  # how often a worker writes its figures
SERIES = re.compile(
    r'^classifier_worker_(requests_total|connections)\{worker="(\d+)"\} (\S+)$', re.MULTILINE
)


@functools.cache
def _series() -> tuple[Any, Any]:
    """The Prometheus series, made once per worker process (BentoML's workers share them through
    PROMETHEUS_MULTIPROC_DIR, as `serving.watch`'s)."""
    import prometheus_client

    requests = prometheus_client.Counter(
        "classifier_worker_requests",
        "HTTP requests this worker has read (uvicorn's count), by worker index",
        labelnames=("worker",),
    )
    # The newest value per worker, so that a restarted worker's figure replaces its predecessor's.
    connections = prometheus_client.Gauge(
        "classifier_worker_connections",
        "Client connections this worker holds open, by worker index",
        labelnames=("worker",),
        multiprocess_mode="mostrecent",
    )
    return requests, connections


def start(loop, state, worker: str, written: int = 0) -> None:
    """Add the requests uvicorn's `state` read since the last call to `worker`'s counter, set
    its connections, and come back in FIGURES_S on `loop`."""
    requests, connections = _series()
    total = state.total_requests
    # Written even when 0, so that a worker that served nothing shows as such.
    requests.labels(worker).inc(max(0, total - written))
    connections.labels(worker).set(len(state.connections))
    loop.call_later(FIGURES_S, start, loop, state, worker, max(total, written))


def read(metrics_text: str) -> dict[str, dict[str, float]]:
    """{"requests": {worker: n}, "connections": {worker: n}} from a /metrics page's text."""
    found: dict[str, dict[str, float]] = {"requests": {}, "connections": {}}
    for series, worker, value in SERIES.findall(metrics_text):
        found["requests" if series == "requests_total" else series][worker] = float(value)
    return found
