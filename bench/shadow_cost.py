"""What shadowing costs users: single-image latency with a shadow answering every request.

    python bench/shadow_cost.py                       # champion, shadowed by challenger
    python bench/shadow_cost.py --shadow-alias champion --rounds 3 --duration 10

It packages the registered model's champion and the version to shadow (`--shadow-alias`,
`challenger` by default; where the registry has no such alias, a copy of the champion under
another version, which costs what a challenger of the same architecture would), then starts
`bentoml serve` (2 workers) in turns without and with `SHADOW_FILE` naming that version at
`SHADOW_FRACTION=1`, `--rounds` times each (off, on, off, on, ...: drift on a shared machine falls
on both), and drives single images (multipart PNG to `/predict_image`) at concurrency 8. Per run
it prints requests/s, p50, p99 and the server's CPU per request; with the shadow it reads
`/metrics` and checks that the shadow's agreement counts (same class, another, skipped) add up to
the images the champion answered.

Goal (issue 35): single-image p99 at concurrency 8 with the shadow at most 1.3x the p99 without
it (medians of the rounds). The load generator shares the machine's cores with the service.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_driver, serve_payloads, serve_servers, serve_workers
from bench.serve_load import ROOT, model_name, resolve_model
from bench.serve_report import at_most, goal_lines, judged

GOAL_P99_RATIO = 1.3
CONCURRENCY = 8
WORKERS = 2
SHADOW_SERIES = re.compile(
    r'^classifier_shadow_images_total\{[^}]*agreement="(\w+)"[^}]*\} (\S+)$', re.MULTILINE
)
ANSWERED_SERIES = re.compile(
    r'^classifier_predictions_total\{[^}]*endpoint="predict_image"[^}]*\} (\S+)$', re.MULTILINE
)


def shadow_counts(url: str) -> tuple[dict[str, float], float]:
    """The shadow's images by agreement, and the single images the champion answered."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for agreement, value in SHADOW_SERIES.findall(text):
        counts[agreement] = counts.get(agreement, 0.0) + float(value)
    return counts, sum(float(value) for value in ANSWERED_SERIES.findall(text))


def one_run(
    shadowed: bool, args: argparse.Namespace, tags: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    """Start the service (with or without the shadow), load it with single images, stop it."""
    folder = Path(tempfile.mkdtemp(prefix="shadow-", dir=log_dir))
    extra = {
        "BENTO_MODEL": tags["champion"],
        "SERVING_WORKERS": str(WORKERS),
        "MONITOR_DIR": str(folder / "monitoring"),
    }
    if shadowed:
        pointer = folder / "shadow-tag"
        pointer.write_text(tags["shadow"] + "\n")
        extra |= {"SHADOW_FILE": str(pointer), "SHADOW_FRACTION": "1"}
    env = serve_servers.server_env(
        bentoml_home=os.environ["BENTOML_HOME"], tracking_uri=args.tracking_uri, extra=extra
    )
    server = serve_servers.start_ours(
        service=serve_servers.SERVICE, env=env, log_dir=folder, ready_timeout=180.0
    )
    try:
        serve_workers.all_accepting(server.url, WORKERS, timeout_s=60.0)
        (cell,) = serve_driver.measure(
            "shadowed" if shadowed else "alone",
            server,
            {"single": args.request},
            concurrencies=[CONCURRENCY],
            duration_s=args.duration,
            warmup_s=args.warmup,
            timeout_s=60.0,
            failed={},
            report=lambda cell: None,
        )
        time.sleep(1.0)  # the last requests' shadow calls finish off the response path
        counts, answered = shadow_counts(server.url) if shadowed else ({}, 0.0)
    finally:
        serve_servers.stop_all([server])
    figures = cell.summary() | {"shadow_counts": counts, "answered": answered}
    shadow = f"; shadow {counts} of {answered:.0f} answered" if shadowed else ""
    print(
        f"- {'with' if shadowed else 'without'} the shadow: {cell.requests_per_s:,.0f} req/s,"
        f" p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, server CPU"
        f" {figures['server_cpu_ms_per_request'] or float('nan'):.2f} ms/request, errors"
        f" {cell.errors}{shadow}",
        flush=True,
    )
    return figures


def package_shadow(name: str, alias: str, champion_tag: str) -> tuple[str, str]:
    """The BentoML tag of the version `alias` names, or of a copy of the champion under another
    version where the registry has none (a shadow of the served version itself is not run)."""
    try:
        return resolve_model(name, alias).bento_tag, f"@{alias}"
    except Exception as error:
        print(f"- no {alias!r} version ({type(error).__name__}); shadowing a copy of the champion")
        return copy_of(champion_tag), "a copy of @champion"


def copy_of(tag: str) -> str:
    """A copy of the stored model `tag` as `<name>-copy`, whose answers name version `<v>-copy`:
    it costs what the champion costs, as a challenger of the same architecture would."""
    import bentoml

    source = bentoml.models.get(tag)
    copy_tag = f"{source.tag.name}-copy:{source.tag.version}"
    with contextlib.suppress(bentoml.exceptions.NotFound):
        return str(bentoml.models.get(copy_tag).tag)
    metadata = dict(source.info.metadata)
    metadata["version"] = f"{metadata.get('version', source.tag.version)}-copy"
    with bentoml.models.create(copy_tag, metadata=metadata, labels=source.info.labels) as copy:
        ignore = shutil.ignore_patterns("model.yaml")
        shutil.copytree(source.path, copy.path, dirs_exist_ok=True, ignore=ignore)
    return copy_tag


def judge(runs: dict[bool, list[dict[str, Any]]]) -> list[str]:
    """The goal's verdict, and whether the counts added up in every shadowed run."""
    alone = statistics.median(run["p99_ms"] for run in runs[False])
    shadowed = statistics.median(run["p99_ms"] for run in runs[True])
    ratio = shadowed / alone
    added_up = all(
        sum(run["shadow_counts"].values()) == run["answered"] > 0 and not run["errors"]
        for run in runs[True]
    )
    goal = judged(
        f"single-image p99 at c={CONCURRENCY} with a shadow on every request <="
        f" {GOAL_P99_RATIO}x without",
        f"{shadowed:.1f} ms against {alone:.1f} ms ({ratio:.2f}x; medians of"
        f" {len(runs[True])} runs each)",
        [at_most(ratio, GOAL_P99_RATIO, "x")],
    )
    counts = judged(
        "the shadow's agreement counts add up to the images answered, no errors",
        "yes" if added_up else "no",
        [] if added_up else ["they do not"],
    )
    return goal_lines([goal, counts])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered-model", help="default: params.yaml's (REGISTERED_MODEL)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--shadow-alias", default="challenger")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "test.npz")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    args.alias = "champion"
    name = model_name(args)
    print(f"# Shadow cost: {name}@champion, shadowed by @{args.shadow_alias}\n")
    champion = resolve_model(name, "champion")
    shadow_tag, shadow_alias = package_shadow(name, args.shadow_alias, champion.bento_tag)
    tags = {"champion": champion.bento_tag, "shadow": shadow_tag}
    print(f"- shadow: {shadow_tag} ({shadow_alias})")
    args.tracking_uri = champion.tracking_uri
    images, _, source = serve_payloads.load_images(args.data, 1)
    args.request = serve_payloads.single_image_request(serve_payloads.png_bytes(images[0]))
    print(f"- request: one 28x28 PNG from {source}\n")
    log_dir = Path(tempfile.mkdtemp(prefix="shadow_cost-"))
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for shadowed in (False, True):
            runs[shadowed].append(one_run(shadowed, args, tags, log_dir))
    print("\n" + "\n".join(judge(runs)) + f"\n\nServer logs: {log_dir}")


if __name__ == "__main__":
    main()
