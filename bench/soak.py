"""Soak: minutes of mixed good and bad traffic at a fixed rate against a real `bentoml serve`.

    python bench/soak.py                                  # 10 minutes at 60 req/s, champion
    python bench/soak.py --minutes 2 --rate 20 --window 20
    python bench/soak.py --bento-model fashion-mnist-classifier:3 --json soak.json

The server is started as `make serve` starts it (`bentoml serve serving.service:Classifier`,
the registry's champion packaged into the BentoML store, SERVING_WORKERS unset unless --workers).
The load is open-loop: request i leaves at i / rate seconds whatever the answers, so a slow
server meets the same traffic as a fast one. Of every --batch-every requests one is a
--batch-size image `/predict` batch; the others are a good single image (multipart PNG to
`/predict_image`) or, with --bad-fraction, a bad request of the kinds users send by mistake.

Per window (default one minute) it prints: the requests answered, single-image p50 and p99, the
slowest batch, 4xx, 5xx and cut connections, the resident memory (RSS) and open files of every
process of the server's tree, and the size of the watch's records under MONITOR_DIR. Goals:
no 5xx; each worker's RSS grows by at most 10% from window 2 to the last; the single-image p99
of the last window is at most 1.5x window 2's. The client shares the machine's cores with the
server: on a busy machine the latencies say as much about the machine as about the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_payloads
from bench.serve_driver import Request
from tests.support import servers

MIB = 1024 * 1024
GOAL_RSS_GROWTH = 0.10
GOAL_P99_RATIO = 1.5
# Requests still in flight beyond this are not sent: the client would only measure itself.
MAX_IN_FLIGHT = 1024


@dataclass(frozen=True)
class Traffic:
    """What is sent: `rate` requests per second, of which one in `batch_every` is a batch of
    `batch_size` images (0: none) and a `bad_fraction` of the rest are bad requests."""

    rate: float = 60.0
    bad_fraction: float = 0.2
    batch_every: int = 50
    batch_size: int = 256


@dataclass(frozen=True)
class Outcome:
    done: float
    kind: str
    status: int
    ms: float
    # Whether a batch was in flight at some point while this request was.
    beside_batch: bool = False


@dataclass
class Window:
    """What one window of the soak saw."""

    index: int
    requests: dict[str, int] = field(default_factory=dict)
    single_p50_ms: float | None = None
    single_p99_ms: float | None = None
    # Single-image p99 of the requests answered while a batch was in flight, and of the others.
    beside_batch_p99_ms: float | None = None
    alone_p99_ms: float | None = None
    batch_max_ms: float | None = None
    status_4xx: int = 0
    status_5xx: int = 0
    cut: int = 0
    unexpected: list[str] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)
    open_files: dict[str, int] = field(default_factory=dict)
    records_mib: float = 0.0


def payloads(images: np.ndarray, batch_size: int) -> dict[str, list[Request]]:
    """Pre-encoded requests: good single images, bad requests, the batch."""
    form = f"multipart/form-data; boundary={serve_payloads.MULTIPART_BOUNDARY}"
    pngs = [serve_payloads.png_bytes(image) for image in images[:64]]
    good = [serve_payloads.single_image_request(png) for png in pngs]
    text_part = (
        f"--{serve_payloads.MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data;"
        f' name="image"\r\n\r\nhttp://example.com/a.png\r\n--{serve_payloads.MULTIPART_BOUNDARY}--\r\n'
    ).encode()
    bad = [
        Request("/predict_image", b"not an image at all" * 10, "image/png", 1),
        serve_payloads.single_image_request(pngs[0], field_name="picture"),
        Request("/predict_image", text_part, form, 1),
        Request("/predict_image", b'{"image": 1}', "application/json", 1),
        Request("/predict", b'{"pixels": [[1, 2], [3]]}', "application/json", 1),
        Request("/predict", b'{"pixels": "none"}', "application/json", 1),
        Request("/predict_images", pngs[0], "image/png", 1),
    ]
    pixels = serve_payloads.to_uint8(np.resize(images, (batch_size, 28, 28)))
    body = json.dumps({"pixels": pixels.tolist()}, separators=(",", ":")).encode()
    return {
        "good": good,
        "bad": bad,
        "batch": [Request("/predict", body, "application/json", batch_size)],
    }


def kind_of(index: int, traffic: Traffic, rng: random.Random) -> str:
    if traffic.batch_every and index % traffic.batch_every == traffic.batch_every - 1:
        return "batch"
    return "bad" if rng.random() < traffic.bad_fraction else "good"


def tree_state(root: int) -> tuple[dict[str, float], dict[str, int]]:
    """RSS (MiB) and open file descriptors of each process of `root`'s tree, by 'role pid'."""
    rss, files = {}, {}
    for pid in servers.process_tree(root, servers.process_table()):
        name = f"{'server' if pid == root else 'worker'} {pid}"
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            files[name] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # ended meanwhile
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[name] = round(int(line.split()[1]) / 1024, 1)
    return rss, files


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / MIB


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


def summarize(index: int, outcomes: list[Outcome], root: int, monitor_dir: Path) -> Window:
    """One window's figures from the requests that completed in it, and the tree as it is now."""
    window = Window(index)
    singles = sorted(
        outcome.ms for outcome in outcomes if outcome.kind == "good" and outcome.status == 200
    )
    batches = [outcome.ms for outcome in outcomes if outcome.kind == "batch"]
    for outcome in outcomes:
        window.requests[outcome.kind] = window.requests.get(outcome.kind, 0) + 1
        window.status_4xx += 400 <= outcome.status < 500
        window.status_5xx += outcome.status >= 500
        window.cut += outcome.status == 0
        ok = 400 <= outcome.status < 500 if outcome.kind == "bad" else outcome.status == 200
        if not ok:
            window.unexpected.append(f"{outcome.kind}: HTTP {outcome.status}")
    window.single_p50_ms = percentile(singles, 0.5)
    window.single_p99_ms = percentile(singles, 0.99)
    for beside, name in ((True, "beside_batch_p99_ms"), (False, "alone_p99_ms")):
        some = [
            outcome.ms
            for outcome in outcomes
            if outcome.kind == "good" and outcome.status == 200 and outcome.beside_batch == beside
        ]
        setattr(window, name, percentile(sorted(some), 0.99))
    window.batch_max_ms = round(max(batches), 1) if batches else None
    window.rss_mib, window.open_files = tree_state(root)
    window.records_mib = round(folder_mib(monitor_dir), 2) if monitor_dir.is_dir() else 0.0
    window.unexpected = window.unexpected[:5]
    return window


async def soak(
    base_url: str,
    root: int,
    *,
    requests: dict[str, list[Request]],
    traffic: Traffic,
    duration_s: float,
    window_s: float,
    monitor_dir: Path,
    report=print,
    seed: int = 0,
) -> list[Window]:
    """Send `traffic` for `duration_s` seconds; a `Window` every `window_s` seconds."""
    import aiohttp

    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    windows: list[Window] = []
    in_flight: set[asyncio.Task] = set()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        batches = {"in_flight": 0, "sent": 0}

        async def send(kind: str, request: Request) -> None:
            sent = time.perf_counter()
            seen = (batches["in_flight"], batches["sent"])
            if kind == "batch":
                batches["in_flight"] += 1
                batches["sent"] += 1
            try:
                async with session.post(
                    base_url + request.path, data=request.body, headers=request.headers
                ) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            done = time.perf_counter()
            if kind == "batch":
                batches["in_flight"] -= 1
            beside = seen[0] > 0 or seen[1] != batches["sent"] or batches["in_flight"] > 0
            outcomes.append(Outcome(done, kind, status, (done - sent) * 1000, beside))

        start = time.perf_counter()
        end, next_window, index = start + duration_s, start + window_s, 0
        while (now := time.perf_counter()) < end:
            while now >= next_window:
                windows.append(
                    _close(outcomes, next_window, len(windows), root, monitor_dir, report)
                )
                next_window += window_s
            due = start + index / traffic.rate
            if due > now:
                await asyncio.sleep(min(due, next_window) - now)
                continue
            kind = kind_of(index, traffic, rng)
            index += 1
            if len(in_flight) < MAX_IN_FLIGHT:
                task = asyncio.create_task(send(kind, rng.choice(requests[kind])))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)
        windows.append(_close(outcomes, float("inf"), len(windows), root, monitor_dir, report))
    return windows


def _close(outcomes, until, index, root, monitor_dir, report) -> Window:
    """The window of the outcomes completed before `until` (taken out of `outcomes`)."""
    done = [outcome for outcome in outcomes if outcome.done < until]
    outcomes[:] = [outcome for outcome in outcomes if outcome.done >= until]
    window = summarize(index, done, root, monitor_dir)
    report(row(window))
    return window


def row(window: Window) -> str:
    memory = ", ".join(f"{name} {mib:.0f}" for name, mib in window.rss_mib.items())
    files = sum(window.open_files.values())
    return (
        f"window {window.index + 1:>3}: {sum(window.requests.values()):>5} answered"
        f" | single p50 {window.single_p50_ms} p99 {window.single_p99_ms} ms (p99 beside a"
        f" batch {window.beside_batch_p99_ms}, alone {window.alone_p99_ms})"
        f" | batch max {window.batch_max_ms} ms | 4xx {window.status_4xx} 5xx"
        f" {window.status_5xx} cut {window.cut} | RSS MiB: {memory} | fds {files}"
        f" | records {window.records_mib:.2f} MiB"
    )


def goals(windows: list[Window]) -> dict[str, Any]:
    """The soak's goals, judged from the second window to the last."""
    if len(windows) < 3:
        return {"error": "too few windows to judge: run at least three"}
    second, last = windows[1], windows[-1]
    growth = {
        name: round(last.rss_mib[name] / mib - 1, 4)
        for name, mib in second.rss_mib.items()
        if name.startswith("worker") and name in last.rss_mib
    }
    p99_ratio = (
        round(last.single_p99_ms / second.single_p99_ms, 2)
        if last.single_p99_ms and second.single_p99_ms
        else None
    )
    return {
        "status_5xx": sum(window.status_5xx for window in windows),
        "cut": sum(window.cut for window in windows),
        "rss_growth": growth,
        "workers_replaced": sorted(set(second.rss_mib) ^ set(last.rss_mib)),
        "p99_ratio": p99_ratio,
        "no_5xx": all(window.status_5xx == 0 for window in windows),
        "bounded_rss": bool(growth) and max(growth.values()) <= GOAL_RSS_GROWTH,
        "steady_p99": p99_ratio is not None and p99_ratio <= GOAL_P99_RATIO,
    }


def goal_lines(judged: dict[str, Any]) -> list[str]:
    if "error" in judged:
        return [judged["error"]]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    worst = max(judged["rss_growth"].values(), default=float("nan"))
    return [
        f"{verdict(judged['no_5xx'])}  no 5xx: {judged['status_5xx']}"
        f" (cut connections: {judged['cut']})",
        f"{verdict(judged['bounded_rss'])}  each worker's RSS grows <= {GOAL_RSS_GROWTH:.0%} from"
        f" window 2 to the last: worst {worst:+.1%} {judged['rss_growth']}"
        + (f"; replaced: {judged['workers_replaced']}" if judged["workers_replaced"] else ""),
        f"{verdict(judged['steady_p99'])}  single-image p99, last window <= {GOAL_P99_RATIO}x"
        f" window 2's: {judged['p99_ratio']}x",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--bad-fraction", type=float, default=0.2)
    parser.add_argument("--batch-every", type=int, default=50, help="0: no batches")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, help="SERVING_WORKERS (default: as make serve)")
    parser.add_argument("--bento-model", help="serve this BentoML tag instead of the champion")
    parser.add_argument("--registered-model", help="default: params.yaml's")
    parser.add_argument("--data", type=Path, default=servers.REPO_ROOT / "data/prepared/test.npz")
    parser.add_argument("--monitor-dir", type=Path, help="MONITOR_DIR (default: a new folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.window <= 0 or args.minutes <= 0:
        parser.error("--rate, --window and --minutes must be > 0")
    if not 0 <= args.bad_fraction <= 1 or args.batch_every < 0 or not 1 <= args.batch_size <= 1024:
        parser.error("--bad-fraction in [0, 1], --batch-every >= 0, --batch-size in [1, 1024]")
    return args


def served_tag(args: argparse.Namespace) -> str:
    """The BentoML tag to serve: --bento-model, else the champion packaged as `make serve` does."""
    os.environ.setdefault("BENTOML_HOME", str(servers.REPO_ROOT / ".bentoml"))
    if args.bento_model:
        return args.bento_model
    from pipeline import tracking
    from pipeline.champion import registry
    from serving.tools import package

    name = args.registered_model or package.default_registered_model(
        servers.REPO_ROOT / "params.yaml"
    )
    return package.package(
        registered_model=name, tracking_uri=tracking.tracking_uri(), alias=registry.CHAMPION
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = served_tag(args)
    monitor_dir = args.monitor_dir or Path(tempfile.mkdtemp(prefix="soak-monitoring-"))
    env = {"BENTO_MODEL": tag, "MONITOR_DIR": str(monitor_dir), "PYTHONUNBUFFERED": "1"}
    if args.workers:
        env["SERVING_WORKERS"] = str(args.workers)
    traffic = Traffic(args.rate, args.bad_fraction, args.batch_every, args.batch_size)
    images, _, source = serve_payloads.load_images(args.data, max(64, args.batch_size))
    print(f"# Soak: {tag}, {args.minutes:g} min at {traffic}, windows of {args.window:g} s")
    print(f"- images: {source}; watch records: {monitor_dir}")
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "bentoml.log"
    with servers.bentoml_serve(env, log=log) as server:
        ready = server.wait_ready("/readyz", timeout=180)
        print(f"- server ready in {ready:.1f} s ({server.url}, log {log})")
        windows = asyncio.run(
            soak(
                server.url,
                server.pid,
                requests=payloads(images, args.batch_size),
                traffic=traffic,
                duration_s=60 * args.minutes,
                window_s=args.window,
                monitor_dir=monitor_dir,
            )
        )
    judged = goals(windows)
    print("\n" + "\n".join(goal_lines(judged)))
    return {
        "tag": tag,
        "traffic": asdict(traffic),
        "windows": [asdict(w) for w in windows],
        "goals": judged,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
