"""Two versions of the service under the same single-image load, in alternating runs.

    python bench/serve_ab.py --base HEAD~1                # the commit before, against the tree
    python bench/serve_ab.py --base-env ACCESS_LOG=1      # a setting, against the default
    python bench/serve_ab.py --base v1.2 --rounds 5 --duration 10

The base arm runs `bentoml serve` from a temporary git worktree of `--base` (default: this
working tree) with the `--base-env` settings; the head arm from this working tree with
`--head-env`. Both serve the registered model's champion with 2 workers, in turns (base, head,
base, head, ...: drift on a shared machine falls on both), and get a multipart PNG of one test
image at `/predict_image` from `--concurrency` clients. Per run it prints requests/s, p50, p99,
the server's CPU per request and the prediction records' rows on disk; then the medians of each
arm with the range of its runs, head / base, and whether the arms' runs overlap (on a shared
machine a change smaller than the runs' spread is not told apart by a few rounds). There is no
goal: it says how a change moved the figures, with both arms measured in the same run on the
same machine (read single figures with care on a shared one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_driver, serve_payloads, serve_servers, serve_workers
from bench.serve_load import ROOT, model_name, resolve_model

WORKERS = 2
FIGURES = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")


def settings(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE pairs as a dict; a pair without `=` is an error."""
    found = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise SystemExit(f"a setting is KEY=VALUE, got {pair!r}")
        found[key] = value
    return found


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """This working tree for None, else a temporary detached worktree of `revision`."""
    if revision is None:
        yield ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="serve_ab-")) / "tree"
    git = ["git", "-C", str(ROOT)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", "--quiet", str(folder), revision], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], check=False)


def one_run(arm: str, code: Path, extra: dict[str, str], args: argparse.Namespace) -> dict:
    """Serve from `code` with `extra` settings, load it with single images, stop it."""
    folder = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=args.log_dir))
    env = serve_servers.server_env(
        bentoml_home=os.environ["BENTOML_HOME"],
        tracking_uri=args.tracking_uri,
        extra={
            "BENTO_MODEL": args.model_tag,
            "SERVING_WORKERS": str(WORKERS),
            "MONITOR_DIR": str(folder / "monitoring"),
        }
        | extra,
    )
    server = serve_servers.start_ours(
        service=serve_servers.SERVICE,
        env=env,
        log_dir=folder,
        ready_timeout=180.0,
        name=arm,
        cwd=code,
    )
    try:
        serve_workers.all_accepting(server.url, WORKERS, timeout_s=60.0)
        (cell,) = serve_driver.measure(
            arm,
            server,
            {"single": args.request},
            concurrencies=[args.concurrency],
            duration_s=args.duration,
            warmup_s=args.warmup,
            timeout_s=60.0,
            failed={},
            report=lambda cell: None,
        )
    finally:
        serve_servers.stop_all([server])
    rows = sum(len(path.read_text().splitlines()) for path in folder.rglob("data.*.log*"))
    figures = cell.summary() | {"rows": rows, "errors": cell.errors}
    print(
        f"- {arm}: {figures['requests_per_s']:,.0f} req/s, p50 {figures['p50_ms']:.1f} ms,"
        f" p99 {figures['p99_ms']:.1f} ms, server CPU"
        f" {figures['server_cpu_ms_per_request'] or float('nan'):.3f} ms/request,"
        f" {rows:,} rows recorded, {cell.errors} errors",
        flush=True,
    )
    return figures


def compared(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per figure: each arm's median and range, head / base, and whether the arms' runs overlap
    (then this many rounds cannot tell the two apart on this machine)."""
    lines = []
    for figure in FIGURES:
        values = {
            arm: [run[figure] or float("nan") for run in runs[arm]] for arm in ("base", "head")
        }
        base, head = (statistics.median(values[arm]) for arm in ("base", "head"))
        ranges = {arm: f"{min(found):,.3f}-{max(found):,.3f}" for arm, found in values.items()}
        overlap = max(min(found) for found in values.values()) <= min(
            max(found) for found in values.values()
        )
        lines.append(
            f"- {figure}: base {base:,.3f} ({ranges['base']}), head {head:,.3f}"
            f" ({ranges['head']}), head/base {head / base:.3f}; "
            + ("the arms' runs overlap" if overlap else "every run of one arm beyond the other's")
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a git revision; default: this working tree")
    parser.add_argument("--base-env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--head-env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--registered-model", help="default: params.yaml's (REGISTERED_MODEL)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "test.npz")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    args.alias = "champion"
    champion = resolve_model(model_name(args), "champion")
    args.model_tag, args.tracking_uri = champion.bento_tag, champion.tracking_uri
    images, _, source = serve_payloads.load_images(args.data, 1)
    args.request = serve_payloads.single_image_request(serve_payloads.png_bytes(images[0]))
    args.log_dir = Path(tempfile.mkdtemp(prefix="serve_ab-logs-"))
    arms = {"base": settings(args.base_env), "head": settings(args.head_env)}
    print(f"# A/B: base {args.base or 'this tree'} {arms['base']} against head this tree")
    print(f"{arms['head']}; {args.model_tag}; one 28x28 PNG from {source}; c={args.concurrency}\n")
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with checkout(args.base) as base_code:
        code = {"base": base_code, "head": ROOT}
        for _ in range(args.rounds):
            for arm, extra in arms.items():
                runs[arm].append(one_run(arm, code[arm], extra, args))
                time.sleep(1.0)
    print(f"\nMedians of {args.rounds} runs each:\n" + "\n".join(compared(runs)))
    print(f"\nServer logs: {args.log_dir}")


if __name__ == "__main__":
    main()
