"""Serving load: our BentoML service vs `mlflow models serve` on the same registered version.

    python bench/serve_load.py                          # champion of params.yaml's model
    python bench/serve_load.py --duration 10 --concurrency 1,8,32 --batch-size 256
    python bench/serve_load.py --kinds single,batch --skip-mlflow --json out.json
    SERVING_WORKERS=2 python bench/serve_load.py --workers 2

Packages the registry's champion into the BentoML store (`serving.tools.package`), starts
`bentoml serve serving.service:Classifier` with `BENTO_MODEL=<tag>` and `mlflow models serve -m
models:/<name>/<version> --env-manager local` (through tests/support/servers.py), both on
127.0.0.1 with free ports and the same number of worker processes, one after the other so that
each has the machine to itself (an idle MLflow server took a tenth of a core), and checks the
answers of every kind of request (OIP's equal to /predict's, accuracy against the test labels,
then the same classes from both servers). A kind of ours whose check request fails is reported
as a failed cell and not loaded; the others are driven with a bounded load, and the report
prints req/s, images/s, p50/p99 latency, server CPU ms per request, server memory and the ratio
ours / MLflow per cell, then each goal with PASS / MISS and by how much it is missed. Each
single-image cell of ours is also set against the sum of its parts, measured in the same run: the
`GET /livez` floor's server CPU per request at its concurrency, plus its upload's preprocessing
and forward pass in this process with one thread, before any server starts
(`bench.preprocess_cost`); the cell's server CPU is printed as a multiple of that sum. Two
bounds are measured in the same run and printed beside the goals they bound: the images/s the
served file's forward pass alone allows on the usable cores (`bench.forward_ceiling`, a batch in
this process with one thread), beside the batch goals; and the ready time of a BentoML service
with one endpoint and no model (`bench/bare_service.py`, same workers), beside ours.

The modules: `serve_payloads` (what each kind sends, how answers are read), `serve_driver` (the
load: concurrency, latencies, cells), `serve_servers` (server processes, their CPU and memory),
`serve_workers` (requests per worker of ours, fresh client pools), `serve_report` (table and
goals, listed in its docstring).

The client runs on the same cores as the server, so every figure is a lower bound for a server
with cores of its own; each cell shows the cores busy in its window: server (its whole process
tree), client, other work (anything but ~0 there means the figures are not representative).
Environment: MLFLOW_TRACKING_URI (default: the repository's SQLite store), REGISTERED_MODEL,
BENTOML_HOME (default `<repo>/.bentoml`, as `make serve` uses).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, Python puts bench/ first on sys.path; the repository root makes `bench`,
# `tests.support`, `pipeline` and `serving` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (
    forward_ceiling,
    preprocess_cost,
    serve_driver,
    serve_payloads,
    serve_report,
    serve_servers,
    serve_workers,
)
from pipeline.champion import registry
from tests.support import servers

ROOT = servers.REPO_ROOT
# BentoML's own start, measured beside ours (`bare_ready_s`).
BARE_SERVICE = "bench.bare_service:Bare"


@dataclass(frozen=True)
class Model:
    """The registered version under test, as both servers get it."""

    name: str
    bento_tag: str
    uri: str
    classes: int
    tracking_uri: str
    # The ONNX file the service serves, inside the BentoML store, and the box it scales uploads to.
    onnx_file: Path
    content_size: int


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
    known = serve_payloads.KINDS
    if not kinds or set(kinds) - set(known):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(known)}, got {text!r}")
    return [kind for kind in known if kind in kinds]


def build_parser() -> argparse.ArgumentParser:
    """The command line; `parse_args` checks what the types alone cannot."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    kinds, defaults = ",".join(serve_payloads.KINDS), ",".join(serve_payloads.DEFAULT_KINDS)
    parser.add_argument("--registered-model", help="default: params.yaml's (REGISTERED_MODEL)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--alias", default=registry.CHAMPION)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument(
        "--concurrency",
        type=parse_concurrency,
        default=[1, 8, 32],
        help="requests in flight, one cell each (default 1,8,32)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images per /predict, OIP and MLflow batch"
    )
    parser.add_argument(
        "--upload-batch",
        type=int,
        default=32,
        help="images per /predict_images request (at most --batch-size)",
    )
    parser.add_argument(
        "--kinds",
        type=parse_kinds,
        default=list(serve_payloads.DEFAULT_KINDS),
        help=f"requests to time, some of {kinds} (default {defaults}; see serve_payloads.py)",
    )
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("SERVING_WORKERS", 1)),
        help="worker processes of each server (SERVING_WORKERS for ours, -w for MLflow)",
    )  # fmt: skip
    parser.add_argument(
        "--service",
        default=serve_servers.SERVICE,
        help="the BentoML service to start (a variant to compare; put its folder on PYTHONPATH)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "prepared" / "test.npz",
        help="test split with x (N, 28, 28) floats in [0, 1] and labels; synthetic if missing",
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--fresh-starts", type=int, default=20,
        help="fresh client pools of 8 connections that check how ours spreads them (0: none)",
    )  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--json", help="also write the raw figures to this file ('-': print them)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked against the service's limits."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1024:
        parser.error("--batch-size must be in [1, 1024] (the service's MAX_BATCH_ITEMS default)")
    if not 1 <= args.upload_batch <= 64:
        parser.error("--upload-batch must be in [1, 64] (the service's MAX_IMAGES default)")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM becomes what Ctrl-C is, so the `finally` that stops the servers runs.
    raise KeyboardInterrupt


def model_name(args: argparse.Namespace) -> str:
    """The registered model's name: --registered-model, REGISTERED_MODEL or params.yaml's."""
    from serving.tools import package

    return args.registered_model or package.default_registered_model(args.params)


def resolve_model(name: str, alias: str) -> Model:
    """The version `alias` names, packaged into the BentoML store (once) for our service."""
    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    from pipeline import tracking
    from serving.tools import package

    tracking_uri = tracking.tracking_uri()
    started = time.perf_counter()
    tag = package.package(registered_model=name, tracking_uri=tracking_uri, alias=alias)
    import bentoml

    from serving import model as served_model
    from serving import preprocess

    stored_model = bentoml.models.get(tag)
    stored = dict(stored_model.info.metadata)
    model = Model(
        name=name,
        bento_tag=tag,
        uri=stored.get("model_uri") or f"models:/{name}/{tag.rsplit(':v', 1)[-1]}",
        classes=len(stored.get("class_names") or []) or 10,
        tracking_uri=tracking_uri,
        onnx_file=Path(stored_model.path) / served_model.served_file(stored),
        content_size=int(stored.get("content_size", preprocess.MNIST_CONTENT_SIZE)),
    )
    print(
        f"- model: {model.uri} (BentoML tag {tag}, packaged in"
        f" {time.perf_counter() - started:.1f} s); tracking {tracking_uri}; BENTOML_HOME"
        f" {os.environ['BENTOML_HOME']}"
    )
    return model


def start_server(
    name: str, args: argparse.Namespace, model: Model, log_dir: Path
) -> servers.Server:
    """Start ours or MLflow's on the registered version; wait until it is ready."""
    env = serve_servers.server_env(
        bentoml_home=os.environ["BENTOML_HOME"], tracking_uri=model.tracking_uri, extra={}
    )
    if name == "ours":
        ours_env = env | {"BENTO_MODEL": model.bento_tag, "SERVING_WORKERS": str(args.workers)}
        server = serve_servers.start_ours(
            service=args.service, env=ours_env, log_dir=log_dir, ready_timeout=args.ready_timeout
        )
    else:
        server = serve_servers.start_mlflow(
            model_uri=model.uri,
            workers=args.workers,
            env=env,
            log_dir=log_dir,
            ready_timeout=args.ready_timeout,
        )
    print(
        f"- {'ours' if name == 'ours' else 'MLflow'} ready in {server.ready_s:.2f} s ({server.url})"
    )
    return server


def bare_ready_s(args: argparse.Namespace, log_dir: Path) -> float | None:
    """Seconds to /readyz of a BentoML service with one endpoint and no model
    (`bench/bare_service.py`), with ours' workers: BentoML's own start on this machine. None,
    said, when it did not start: it is a reference, not one of the servers measured."""
    env = serve_servers.server_env(
        bentoml_home=os.environ["BENTOML_HOME"],
        tracking_uri="",
        extra={"SERVING_WORKERS": str(args.workers)},
    )
    (log_dir / "bare").mkdir(exist_ok=True)
    try:
        server = serve_servers.start_ours(
            service=BARE_SERVICE,
            env=env,
            log_dir=log_dir / "bare",
            ready_timeout=args.ready_timeout,
            name="bare",
        )
    except RuntimeError as error:
        print(f"- a bare BentoML service did not start ({error}); see {log_dir / 'bare'}")
        return None
    serve_servers.stop_all([server])
    print(f"- a bare BentoML service (one endpoint, no model) ready in {server.ready_s:.2f} s")
    return server.ready_s


@dataclass
class Outcome:
    """What one run of both servers measured."""

    cells: list[serve_driver.Cell]
    ready: dict[str, float]
    memory: dict[str, dict[str, int]]
    checks: list[str]
    failures: dict[str, str]
    fresh: list[serve_driver.Cell]


def check_answers(
    name: str,
    server: servers.Server,
    requests: dict[str, serve_driver.Request],
    answers: dict[tuple[str, str], list[int]],
    checks: list[str],
    model: Model,
    true_labels: np.ndarray | None,
    args: argparse.Namespace,
) -> dict[str, str]:
    """Send `name`'s requests once, check every answer so far (added to `answers`) and print
    the check lines not printed yet (added to `checks`); the kinds of ours that failed."""
    found, failed = serve_payloads.probe(name, server, requests, timeout_s=args.request_timeout)
    answers |= found
    lines, wrong = serve_payloads.check_answers(
        answers, true_labels=true_labels, classes=model.classes
    )
    failures = failed | wrong if name == "ours" else {}
    if name == "ours":
        if "oip" in requests:
            lines += serve_payloads.oip_lines(server.url, model.name)
        lines += [f"FAILED {kind}: {why}" for kind, why in failures.items()]
    for line in [line for line in lines if line not in checks]:
        print(f"- check: {line}")
        checks.append(line)
    print()
    return failures


def start_check_and_load(
    args: argparse.Namespace,
    model: Model,
    requests: dict[str, dict[str, serve_driver.Request]],
    true_labels: np.ndarray | None,
    log_dir: Path,
) -> Outcome:
    """Each server in turn, alone on the machine: start it, check its answers, load it, stop it.
    Ours' answers are checked on their own before its cells; against MLflow's once both ran."""
    cells: list[serve_driver.Cell] = []
    ready: dict[str, float] = {}
    after_ready: dict[str, dict[str, int]] = {}
    answers: dict[tuple[str, str], list[int]] = {}
    checks: list[str] = []
    failures: dict[str, str] = {}
    fresh: list[serve_driver.Cell] = []
    if (bare := bare_ready_s(args, log_dir)) is not None:
        ready["bare"] = bare
    for name in ("ours",) if args.skip_mlflow else ("ours", "mlflow"):
        server = start_server(name, args, model, log_dir)
        ours = name == "ours"
        try:
            if ours:
                serve_workers.all_accepting(server.url, args.workers, timeout_s=args.ready_timeout)
            ready[name], after_ready[name] = server.ready_s, serve_servers.memory(server.pid)
            failed = check_answers(
                name, server, requests[name], answers, checks, model, true_labels, args
            )
            failures = failed if ours else failures
            cells += serve_driver.measure(
                name,
                server,
                requests[name],
                concurrencies=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                timeout_s=args.request_timeout,
                failed={} if name == "mlflow" else failures,
                report=lambda cell: print(serve_report.progress(cell), flush=True),
                count=functools.partial(serve_workers.counted, server.url) if ours else None,
            )
            if ours:
                fresh = serve_workers.check_fresh_starts(
                    server.url,
                    server.pid,
                    requests[name],
                    failures,
                    count=args.fresh_starts,
                    workers=args.workers,
                    timeout_s=args.request_timeout,
                )
        finally:
            serve_servers.stop_all([server])
    return Outcome(
        cells, ready, serve_servers.peak_memory(after_ready, cells), checks, failures, fresh
    )


def describe_load(args: argparse.Namespace, source: str, cores: int) -> None:
    """The lines that say what is sent, how long, and who shares the cores."""
    print(
        f"- requests: {source}; kinds {', '.join(args.kinds)}; batches of {args.batch_size}"
        f" images ({args.upload_batch} for /predict_images); {args.duration:g} s measured after"
        f" {args.warmup:g} s warm-up per cell; concurrency = requests in flight"
    )
    print(
        f"- each server runs {args.workers} worker process(es); the load generator (1 process,"
        f" asyncio + aiohttp) shares the {cores} cores with the server under test;"
        " each server runs alone: ours is started, checked, measured and stopped, then MLflow's"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Package, start, check, load and stop; print the report; return everything measured."""
    name = model_name(args)
    print(f"# Serving load: {name}@{args.alias}\n")
    info = serve_servers.describe_machine()
    model = resolve_model(name, args.alias)
    images, true_labels, source = serve_payloads.load_images(args.data, args.batch_size)
    requests = serve_payloads.requests_for(
        args.kinds,
        images,
        model_name=model.name,
        upload_batch=args.upload_batch,
        mlflow=not args.skip_mlflow,
    )
    describe_load(args, source, info["usable_cpus"])
    # Before any server runs, so that the parts have the machine to themselves.
    parts = preprocess_cost.single_image_parts(
        args.kinds, images, model_file=model.onnx_file, content_size=model.content_size
    )
    ceiling = forward_ceiling.measure(model.onnx_file, images)
    print(f"- the forward pass alone ({model.onnx_file.name}): {ceiling.text()}")
    log_dir = Path(tempfile.mkdtemp(prefix="serve_load-"))
    outcome = start_check_and_load(args, model, requests, true_labels, log_dir)
    goals = serve_report.goals(outcome.cells, outcome.ready, outcome.memory, parts, ceiling)
    goals.append(serve_workers.spread_goal(outcome.cells, outcome.fresh, args.workers))
    print("\n" + serve_report.table(outcome.cells, parts) + "\n")
    print("\n".join(serve_report.goal_lines(goals)))
    print(
        f"\nClient and server share {info['usable_cpus']} cores; {args.workers} worker process(es)"
        f" per server. Server logs: {log_dir}"
    )
    return {
        "machine": info,
        "model": {
            "uri": model.uri,
            "bento_tag": model.bento_tag,
            "tracking_uri": model.tracking_uri,
        },
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "ready_s": outcome.ready,
        "memory_bytes": outcome.memory,
        "checks": outcome.checks,
        "failed_kinds": outcome.failures,
        "cells": [cell.summary() for cell in outcome.cells],
        "parts_ms": {
            kind: {"preprocess": found.preprocess_ms, "forward": found.forward_ms}
            for kind, found in parts.items()
        },
        "forward_ceiling": asdict(ceiling) | {"images_per_s": ceiling.images_per_s},
        "fresh_starts": [cell.worker_requests for cell in outcome.fresh],
        "goals": serve_report.summary(goals),
        "logs": str(log_dir),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; a server that fails to start or answer ends it with a message."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run(args)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: servers stopped") from None
    except RuntimeError as error:
        raise SystemExit(f"serve_load: {error}") from None
    if args.json == "-":
        print(json.dumps(results, indent=2, default=float))
    elif args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"raw figures: {path}")


if __name__ == "__main__":
    main()
