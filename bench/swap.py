"""Swaps under load: how fast a new champion reaches users, and what a swap costs them.

    python bench/swap.py                                  # webhook, then polling
    python bench/swap.py --modes webhook --json swap.json --keep /tmp/swap   # logs kept

For each mode it brings up, in a scratch folder, the stack of `tests/support/follow_stack.py`:
a registry (`webhook`: an `mlflow server` on SQLite sending signed webhooks; `polling`: the SQLite
store, polled every 5 s as `make serve` does), three versions with their ONNX files, the sidecar
`python -m serving.tools.follow` and `bentoml serve` (2 workers) following it. It then drives the
steady load of `tests/support/swap_load.py` (16 clients back to back, 2 of them sending 256-image
JSON batches, the others single images) while `champion` moves to v2, to v3 (as `evaluate` moves
it) and back to v2 (the rollback command), 20 s plus the goal apart. The steady-load test
(`tests/integration/test_follow_load.py`) runs the same scenario and asserts on it.

Per swap it prints the seconds from the alias change (the `champion_since` the registry recorded)
to the sidecar's rewrite of the tag file, to the first answer by the new version and to the last
worker's swap, and the single-image p99 in the 10 s centred on the first worker's swap against
the 10 s before that. Goals (issue 35), judged on every swap:

    the new version answers within 2 s of the alias change (webhook), within the poll interval
    plus 2 s (polling)
    single-image p99 in the 10 s around a swap <= 1.5x the 10 s before it
    requests lost (non-2xx, cut, timed out, or not answered whole by one version): 0

The clients share the machine's cores with the service, the registry and the sidecar; the cores
each used are printed, and other work on a shared machine shows as "other".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import machine, serve_report, serve_servers
from bench.serve_report import Goal, at_most, judged
from tests.support import follow_stack, swap_load, swap_timeline

GOAL_P99_RATIO = 1.5


def measure(mode: str, folder: Path, shape: swap_load.LoadShape) -> dict[str, Any]:
    """One mode's run: the swaps measured, the requests, the cores used (every request is kept
    in `folder`/answers.json)."""
    with follow_stack.followed_service(mode, folder) as service:
        first = serve_servers.cpu_snapshot(service.serve.pid)
        run = swap_load.run_scenario(service, shape=shape)
        cores = serve_servers.cpu_between(first, serve_servers.cpu_snapshot(service.serve.pid))
        log = swap_timeline.served(service.serve.output())
        goal = service.goal_s
    run.save(folder / "answers.json")
    swaps = swap_timeline.swaps(run.answers, run.moves, log, goal_s=goal, pointed=run.pointed)
    rows = []
    for swap in swaps:
        taken = [value for value in swap.workers_s.values() if value is not None]
        at = swap.move.since + (min(taken) if taken else 0.0)
        around, before, count_around, count_before = swap_timeline.swap_windows(run.answers, at)
        rows.append(
            asdict(swap)
            | {"every_worker_s": swap.every_worker_s, "p99_around_ms": around}
            | {"p99_before_ms": before, "singles_around": count_around}
            | {"singles_before": count_before, "ratio": around / before}
        )
    lost = swap_timeline.lost(run.answers)
    sliding = sorted(swap_timeline.sliding_ratios(run.answers, run.began, run.ended))
    return {
        "mode": mode,
        "goal_s": goal,
        "duration_s": run.ended - run.began,
        "requests": {
            kind: sum(answer.kind == kind for answer in run.answers) for kind in ("single", "batch")
        },
        "lost": len(lost),
        "lost_samples": [answer.problem for answer in lost[:5]],
        "swaps": rows,
        "cores": cores,
        # The same ratio centred on every second of the run: its spread on this machine.
        "sliding_ratio": {
            "median": sliding[len(sliding) // 2],
            "p90": sliding[int(0.9 * len(sliding))],
            "max": sliding[-1],
            "over_goal": sum(ratio > GOAL_P99_RATIO for ratio in sliding) / len(sliding),
        },
    }


def table(result: dict[str, Any]) -> list[str]:
    """One line per swap."""

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    lines = [
        "| move | tag file | first answer | every worker | p99 before | p99 around | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["swaps"]:
        move = row["move"]
        lines.append(
            f"| {move['kind']} v{move['version']} | {seconds(row['pointed_s'])}"
            f" | {seconds(row['first_answer_s'])} | {seconds(row['every_worker_s'])}"
            f" | {row['p99_before_ms']:.1f} ms ({row['singles_before']})"
            f" | {row['p99_around_ms']:.1f} ms ({row['singles_around']}) | {row['ratio']:.2f}x |"
        )
    return lines


def goals(result: dict[str, Any]) -> list[Goal]:
    """The mode's three goals, each judged on every swap."""
    mode, goal = result["mode"], result["goal_s"]
    firsts = [row["first_answer_s"] for row in result["swaps"]]
    text = f"{mode}: the new version answers within {goal:.0f} s of the alias change"
    figure = ", ".join("never" if value is None else f"{value:.2f} s" for value in firsts)
    late = [at_most(value, goal, "s") if value is not None else "never" for value in firsts]
    found = [judged(text, figure, late)]
    ratios = [row["ratio"] for row in result["swaps"]]
    text = f"{mode}: single-image p99 around a swap <= {GOAL_P99_RATIO}x the 10 s before"
    figure = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
    found.append(judged(text, figure, [at_most(ratio, GOAL_P99_RATIO, "x") for ratio in ratios]))
    requests = sum(result["requests"].values())
    text = f"{mode}: requests lost = 0"
    shortfall = f"{result['lost']} lost: {result['lost_samples']}" if result["lost"] else ""
    found.append(judged(text, f"{result['lost']} of {requests:,}", [shortfall]))
    return found


def report(result: dict[str, Any]) -> list[str]:
    cores, sliding = result["cores"], result["sliding_ratio"]
    return [
        f"\n{result['mode']}: {result['requests']['single']:,} single images and"
        f" {result['requests']['batch']:,} batches in {result['duration_s']:.0f} s; cores busy:"
        f" service {cores['server']:.2f}, clients {cores['client']:.2f}, everything else"
        f" (registry, sidecar, other work) {cores['other']:.2f}",
        *table(result),
        f"the same p99 ratio centred on every second of the run (noise, swap or not): median"
        f" {sliding['median']:.2f}x, p90 {sliding['p90']:.2f}x, max {sliding['max']:.2f}x;"
        f" over {GOAL_P99_RATIO}x at {sliding['over_goal']:.0%} of the seconds",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(follow_stack.MODES))
    parser.add_argument("--clients", type=int, default=swap_load.LoadShape.clients)
    parser.add_argument("--batch-clients", type=int, default=swap_load.LoadShape.batch_clients)
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument(
        "--keep", type=Path, help="run in this folder and keep its logs (default: a scratch one)"
    )
    args = parser.parse_args(argv)
    shape = swap_load.LoadShape(clients=args.clients, batch_clients=args.batch_clients)
    print(json.dumps(machine.machine()))
    results, found = [], []
    for mode in args.modes.split(","):
        with contextlib.ExitStack() as stack:
            folder = (
                args.keep / mode
                if args.keep
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swap-")))
            )
            try:
                result = measure(mode, folder, shape)
            except RuntimeError as error:
                raise SystemExit(f"swap: {mode}: {error}") from None
        results.append(result)
        found += goals(result)
        print("\n".join(report(result)), flush=True)
    print("\nGoals:\n" + "\n".join(serve_report.goal_lines(found)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"raw figures: {args.json}")


if __name__ == "__main__":
    main()
