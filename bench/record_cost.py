"""In-process CPU of the prediction record of one answer (`serving.watch.Watch.record`).

    python bench/record_cost.py
    python bench/record_cost.py --images 1 --requests 500 --passes 40

A worker answers a stream of requests of --images images each; every --requests requests (about
one MONITOR_FLUSH_MS interval of single images at ~1,000 req/s) the records' writer thread writes
what is pending. Timed per image, one thread, the median of --passes: the request's share (what a
request spends on its record before the next one) and the writer's share (making the rows and
their JSON, `FileMonitor.flush`), against the baseline measured in the same run: one
`bentoml.monitor` record per request (BentoML's API, the columns made on the request's path), as
the service wrote them before records went in bulk; and, between the two, the columns made on
the request's path and only the lines written in bulk (the service at commit 551e7d0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run as a script, Python puts bench/ first on sys.path; the repository root makes `serving`
# importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving import records
from serving.monitors import FileMonitor
from serving.watch import MONITOR_NAME, Watch

CLASSES = tuple(f"class {index}" for index in range(10))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--requests", type=int, default=500, help="requests per writer block")
    parser.add_argument("--passes", type=int, default=40)
    return parser.parse_args(argv)


def timed(request: Callable[[], None], write: Callable[[], None], args) -> tuple[float, float]:
    """Median CPU microseconds per image: (the requests' share, the writer's share)."""
    shares: list[tuple[float, float]] = []
    images = args.requests * args.images
    for _ in range(args.passes):
        start = time.process_time()
        for _ in range(args.requests):
            request()
        middle = time.process_time()
        write()
        end = time.process_time()
        shares.append(((middle - start) / images * 1e6, (end - middle) / images * 1e6))
    return (
        statistics.median(share[0] for share in shares),
        statistics.median(share[1] for share in shares),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.random((args.images, 28, 28)).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), args.images).astype(np.float32)
    watch = Watch("bench", "1", CLASSES)
    folder = tempfile.mkdtemp(prefix="record_cost-")
    # The writer thread waits longer than the run: the bench writes each block itself.
    monitor = FileMonitor(MONITOR_NAME, folder, flush_s=3600)
    records._WRITTEN[MONITOR_NAME] = monitor

    def in_bulk() -> None:
        watch.record("predict_image", images, probabilities)

    def per_request() -> None:
        columns = watch.columns("predict_image", images, probabilities, probabilities.argmax(1))
        records._record(MONITOR_NAME, columns)

    def columns_now() -> None:
        columns = watch.columns("predict_image", images, probabilities, probabilities.argmax(1))
        monitor.add_rows({name: values for name, (values, _, _) in columns.items()})

    print(f"# one record of {args.images} image(s); {args.requests} requests per block")
    print(f"# CPU per image, median of {args.passes} passes, one thread")
    bulk = timed(in_bulk, monitor.flush, args)
    baseline = timed(per_request, lambda: None, args)
    middle = timed(columns_now, monitor.flush, args)
    bulk_total, baseline_total = sum(bulk), sum(baseline)
    print(f"- bentoml.monitor per request (baseline): {baseline_total:.1f} us, all on the request")
    print(
        f"- columns on the request, lines in bulk: request {middle[0]:.1f} us + writer"
        f" {middle[1]:.1f} us = {sum(middle):.1f} us ({sum(middle) / baseline_total:.2f}x)"
    )
    print(
        f"- in bulk: request {bulk[0]:.1f} us + writer {bulk[1]:.1f} us = {bulk_total:.1f} us"
        f" ({bulk[0] / baseline_total:.2f}x the baseline on the request,"
        f" {bulk_total / baseline_total:.2f}x in all)"
    )


if __name__ == "__main__":
    main()
