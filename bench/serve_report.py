"""The report: a Markdown table of the cells, and each goal with PASS / MISS and by how much.

Goals (ours, measured against `mlflow models serve` on the same version in the same run; issue
37 tightened the p99s, the CPU, the batches and the ready time of the serving issue's goals):

    single image /predict_image at concurrency 8: >= 450 req/s with p99 <= 15 ms
    single image /predict_image at concurrency 32: p99 <= 50 ms
    >= 20x MLflow's single-image throughput (concurrency 8)
    server CPU per single-image request <= 1.2 ms (concurrency 8)
    >= 8,000 images/s through /predict (JSON) in batches (best concurrency)
    >= 10,000 images/s through OIP /infer (binary tensors) in batches (best concurrency)
    preprocessing a photo-like upload in process: <= 0.4 ms (bench.preprocess_cost)
    ready <= 1.5 s after start (process start -> /readyz 200)
    every worker serves >= 25% of the requests of every c=8 cell and of every fresh client pool
    (bench.serve_workers, which counts each cell's requests per worker)
    our server's process tree: resident memory <= 700 MiB (summed RSS, after the batch cells)
    single image /predict_image at concurrency 8: >= 0.5x the floor's req/s (GET /livez, same
    server, same concurrency: what the HTTP stack alone allows)
    single image /predict_image at concurrency 8: server CPU <= 1.7x the sum of its parts (issue
    37): the floor's server CPU per request at the same concurrency, plus the upload's
    preprocessing and forward pass in process, one thread (bench.preprocess_cost.upload_parts)

Beside the goals that a part of the machine or of BentoML bounds, the bound measured in the same
run: the CPU goal with the sum of the request's parts, the batch goals with the images/s the
served file's forward pass alone allows on these cores (bench.forward_ceiling), the ready goal
with a bare BentoML service's ready time (bench/bare_service.py, same workers).

Reported without a goal: /predict_images, the ratios to MLflow's batches, MLflow's memory. Each
single-image goal is judged for every single-image kind measured (multipart upload and raw body),
each on its own line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bench.forward_ceiling import Ceiling
from bench.preprocess_cost import GOAL_PHOTO_MS, Parts
from bench.serve_driver import Cell
from bench.serve_payloads import BASELINE, FLOOR, SINGLE_IMAGE_KINDS

GOAL_CONCURRENCY = 8
GOAL_SINGLE_RPS = 450.0
GOAL_SINGLE_P99_MS = 15.0
HIGH_CONCURRENCY = 32
GOAL_HIGH_P99_MS = 50.0
GOAL_RATIO = 20.0
GOAL_CPU_MS = 1.2
GOAL_BATCH_IMAGES_PER_S = 8000.0
GOAL_OIP_IMAGES_PER_S = 10000.0
GOAL_READY_S = 1.5
GOAL_RSS_MIB = 700.0
GOAL_FLOOR_FRACTION = 0.5
GOAL_PARTS_MULTIPLE = 1.7
MIB = 1024 * 1024
# How much of a failed check's answer a goal line or table row repeats (the full text is above).
FAILURE_CHARACTERS = 100
KIND_NAMES = {
    "single": "multipart",
    "photo": "multipart, photo-like",
    "image_raw": "raw body",
    "images": "multipart, many",
    "batch": "JSON pixels",
    "oip": "OIP binary UINT8",
    FLOOR: "GET /livez",
}


@dataclass(frozen=True)
class Goal:
    """One goal: what it asks, the verdict (PASS, MISS, n/a, info), the figures, the shortfall."""

    goal: str
    verdict: str
    measured: str
    shortfall: str = ""


def at_least(value: float, goal: float, unit: str) -> str:
    """'' when `value` reaches `goal`, else how far short it falls."""
    if value >= goal:
        return ""
    gap = f"{goal - value:,.1f}" + (unit if unit == "x" else f" {unit}")
    return f"{gap} short ({value / goal:.0%} of the goal)"


def at_most(value: float, limit: float, unit: str) -> str:
    """'' when `value` stays within `limit`, else by how much it goes over."""
    if value <= limit:
        return ""
    excess = f"{value - limit:,.1f}" + (unit if unit == "x" else f" {unit}")
    return f"{excess} over ({value / limit:.2f}x the limit)"


def judged(goal: str, measured: str, shortfalls: list[str]) -> Goal:
    """PASS when no part of the goal fell short, else MISS with every shortfall."""
    missing = "; ".join(text for text in shortfalls if text)
    return Goal(goal, "MISS" if missing else "PASS", measured, missing)


def find(cells: list[Cell], server: str, kind: str, concurrency: int) -> Cell | None:
    for cell in cells:
        if (cell.server, cell.kind, cell.concurrency) == (server, kind, concurrency):
            return cell
    return None


def ratio_for(cell: Cell, cells: list[Cell]) -> float | None:
    """Ours / MLflow images/s: the MLflow kind that is this kind's baseline, same concurrency."""
    if cell.server != "ours" or not cell.ok:
        return None
    if cell.kind not in BASELINE:
        return None
    other = find(cells, "mlflow", BASELINE[cell.kind], cell.concurrency)
    if other is None or not other.images_per_s:
        return None
    return cell.images_per_s / other.images_per_s


def not_measured(goal: str, cell: Cell | None) -> Goal | None:
    """The verdict of a goal whose cell is missing (n/a) or failed (MISS); None otherwise."""
    if cell is None:
        return Goal(goal, "n/a", "not measured")
    if cell.failure is not None:
        return Goal(goal, "MISS", f"failed: {cell.failure[:FAILURE_CHARACTERS]}", "not served")
    if not cell.requests:
        sample = cell.error_samples[0] if cell.error_samples else "no request completed"
        return Goal(goal, "MISS", f"no successful request ({sample})", "nothing served")
    return None


def errors_text(cell: Cell) -> str:
    return f"{cell.errors} errors" if cell.errors else ""


def single_image_goals(cells: list[Cell], kind: str, parts: dict[str, Parts]) -> list[Goal]:
    """The four single-image goals for one kind of single-image request."""
    label = f"/predict_image ({KIND_NAMES[kind]})"
    goals = []
    cell = find(cells, "ours", kind, GOAL_CONCURRENCY)
    text = (
        f"{label} at concurrency {GOAL_CONCURRENCY}: >= {GOAL_SINGLE_RPS:.0f} req/s,"
        f" p99 <= {GOAL_SINGLE_P99_MS:.0f} ms"
    )
    if (verdict := not_measured(text, cell)) is None:
        figure = f"{cell.requests_per_s:,.0f} req/s, p99 {cell.percentile(0.99):.1f} ms"
        rate = at_least(cell.requests_per_s, GOAL_SINGLE_RPS, "req/s")
        p99 = at_most(cell.percentile(0.99), GOAL_SINGLE_P99_MS, "ms")
        verdict = judged(text, figure, [rate, p99, errors_text(cell)])
    goals.append(verdict)
    high = find(cells, "ours", kind, HIGH_CONCURRENCY)
    text = f"{label} at concurrency {HIGH_CONCURRENCY}: p99 <= {GOAL_HIGH_P99_MS:.0f} ms"
    if (verdict := not_measured(text, high)) is None:
        figure = f"p99 {high.percentile(0.99):.1f} ms ({high.requests_per_s:,.0f} req/s)"
        p99 = at_most(high.percentile(0.99), GOAL_HIGH_P99_MS, "ms")
        verdict = judged(text, figure, [p99, errors_text(high)])
    goals.append(verdict)
    text = f"{label}: >= {GOAL_RATIO:.0f}x MLflow's single-image req/s at c={GOAL_CONCURRENCY}"
    if (verdict := not_measured(text, cell)) is None:
        ratio = ratio_for(cell, cells)
        verdict = (
            Goal(text, "n/a", "MLflow not measured")
            if ratio is None
            else judged(text, f"{ratio:.1f}x", [at_least(ratio, GOAL_RATIO, "x")])
        )
    goals.append(verdict)
    text = f"{label}: server CPU <= {GOAL_CPU_MS:.1f} ms per request at c={GOAL_CONCURRENCY}"
    if (verdict := not_measured(text, cell)) is None:
        cpu_ms = cell.server_cpu_ms_per_request or math.nan
        figure = f"{cpu_ms:.2f} ms"
        if kind in parts:
            figure += f" (the sum of its parts alone: {parts_sum(cell, cells, parts)[1]:.2f} ms)"
        verdict = judged(text, figure, [at_most(cpu_ms, GOAL_CPU_MS, "ms")])
    goals.append(verdict)
    return goals + floor_goals(cells, kind) + parts_goals(cells, kind, parts)


def floor_goals(cells: list[Cell], kind: str) -> list[Goal]:
    """Each single-image cell of `kind` as a fraction of the floor's req/s at its concurrency:
    a goal at GOAL_CONCURRENCY, reported at the others."""
    goals = []
    for cell in cells:
        if (cell.server, cell.kind) != ("ours", kind):
            continue
        floor = find(cells, "ours", FLOOR, cell.concurrency)
        judged_here = cell.concurrency == GOAL_CONCURRENCY
        text = (
            f"/predict_image ({KIND_NAMES[kind]}) at c={cell.concurrency}: "
            + (f">= {GOAL_FLOOR_FRACTION}x" if judged_here else "fraction of")
            + " the GET /livez floor's req/s"
        )
        verdict = not_measured(text, cell) or not_measured(text, floor)
        if verdict is None:
            fraction = cell.requests_per_s / floor.requests_per_s
            figure = (
                f"{fraction:.2f}x ({cell.requests_per_s:,.0f} / {floor.requests_per_s:,.0f} req/s)"
            )
            shortfall = at_least(fraction, GOAL_FLOOR_FRACTION, "x") if judged_here else ""
            verdict = (
                judged(text, figure, [shortfall]) if judged_here else Goal(text, "info", figure)
            )
        goals.append(verdict)
    return goals


def parts_sum(cell: Cell, cells: list[Cell], parts: dict[str, Parts]) -> tuple[float, float]:
    """(floor's server CPU ms per request at the cell's concurrency, sum of the parts ms) of a
    single-image cell of ours; NaNs where a part was not measured."""
    floor = find(cells, "ours", FLOOR, cell.concurrency)
    floor_ms = (floor.server_cpu_ms_per_request if floor else None) or math.nan
    found = parts.get(cell.kind)
    return floor_ms, floor_ms + (found.total_ms if found else math.nan)


def parts_text(cell: Cell, cells: list[Cell], parts: dict[str, Parts]) -> tuple[str, str]:
    """`sum (floor + preprocess + forward)` and the cell's server CPU as a multiple of the sum;
    empty for cells that are not single-image requests of ours."""
    found = parts.get(cell.kind)
    if cell.server != "ours" or found is None or cell.failure is not None:
        return "", ""
    floor_ms, total = parts_sum(cell, cells, parts)
    cpu_ms = cell.server_cpu_ms_per_request or math.nan
    return (
        f"{total:.2f} ({floor_ms:.2f} + {found.preprocess_ms:.2f} + {found.forward_ms:.2f})",
        f"{cpu_ms / total:.2f}x",
    )


def parts_goals(cells: list[Cell], kind: str, parts: dict[str, Parts]) -> list[Goal]:
    """The server CPU of each single-image cell of `kind` as a multiple of the sum of its parts:
    a goal at GOAL_CONCURRENCY, reported at the others."""
    goals = []
    for cell in cells:
        if (cell.server, cell.kind) != ("ours", kind) or kind not in parts:
            continue
        judged_here = cell.concurrency == GOAL_CONCURRENCY
        text = (
            f"/predict_image ({KIND_NAMES[kind]}) at c={cell.concurrency}: server CPU"
            + (f" <= {GOAL_PARTS_MULTIPLE}x" if judged_here else " as a multiple of")
            + " the sum of its parts (GET /livez CPU + preprocess + forward in process)"
        )
        verdict = not_measured(text, cell)
        if verdict is None:
            total, multiple = parts_text(cell, cells, parts)
            cpu_ms = cell.server_cpu_ms_per_request or math.nan
            figure = f"{multiple} ({cpu_ms:.2f} / {total} ms)"
            ratio = cpu_ms / parts_sum(cell, cells, parts)[1]
            shortfall = at_most(ratio, GOAL_PARTS_MULTIPLE, "x") if judged_here else ""
            verdict = (
                judged(text, figure, [shortfall]) if judged_here else Goal(text, "info", figure)
            )
        goals.append(verdict)
    return goals


def best(cells: list[Cell], kind: str) -> Cell | None:
    """Ours' cell of `kind` with the most images/s; a failed one when none succeeded."""
    found = [cell for cell in cells if (cell.server, cell.kind) == ("ours", kind)]
    return max(found, key=lambda cell: (cell.ok, cell.images_per_s), default=None)


def ceiling_text(cell: Cell, ceiling: Ceiling | None) -> str:
    """'; <share> of the N images/s the forward pass alone allows here', or '' unknown."""
    if ceiling is None or not ceiling.images_per_s:
        return ""
    return (
        f"; {cell.images_per_s / ceiling.images_per_s:.0%} of the {ceiling.images_per_s:,.0f}"
        f" images/s the forward pass alone allows on {ceiling.cores} cores"
    )


def batch_goals(cells: list[Cell], ceiling: Ceiling | None = None) -> list[Goal]:
    """Images/s through /predict and OIP /infer (goals) and /predict_images (reported), best
    concurrency each, with the share of the forward pass's ceiling where it was measured."""
    goals = []
    text = f"/predict batches: >= {GOAL_BATCH_IMAGES_PER_S:,.0f} images/s (best concurrency)"
    cell = best(cells, "batch")
    if (verdict := not_measured(text, cell)) is None:
        figure = (
            f"{cell.images_per_s:,.0f} images/s ({cell.images_per_request} images/request,"
            f" concurrency {cell.concurrency}{ceiling_text(cell, ceiling)})"
        )
        shortfall = at_least(cell.images_per_s, GOAL_BATCH_IMAGES_PER_S, "images/s")
        verdict = judged(text, figure, [shortfall, errors_text(cell)])
    goals.append(verdict)
    for kind, endpoint in (("oip", "OIP /v2/models/<name>/infer"), ("images", "/predict_images")):
        text = (
            f"{endpoint}: >= {GOAL_OIP_IMAGES_PER_S:,.0f} images/s (best concurrency)"
            if kind == "oip"
            else f"{endpoint} images/s (reported; best concurrency)"
        )
        cell = best(cells, kind)
        if cell is None and kind == "images":
            continue
        if (verdict := not_measured(text, cell)) is None:
            ratio = ratio_for(cell, cells)
            figure = (
                f"{cell.images_per_s:,.0f} images/s ({cell.images_per_request} images/request,"
                f" concurrency {cell.concurrency}, p99 {cell.percentile(0.99):,.1f} ms"
                + ("" if ratio is None else f", {ratio:.1f}x MLflow's batches")
                + ceiling_text(cell, ceiling)
                + ")"
            )
            verdict = (
                judged(
                    text,
                    figure,
                    [
                        at_least(cell.images_per_s, GOAL_OIP_IMAGES_PER_S, "images/s"),
                        errors_text(cell),
                    ],
                )
                if kind == "oip"
                else Goal(text, "info", figure, errors_text(cell))
            )
        goals.append(verdict)
    return goals


def server_goals(ready: dict[str, float], memory: dict[str, dict[str, int]]) -> list[Goal]:
    """Readiness after start and our resident memory (goals); MLflow's memory (reported)."""
    text = f"ready <= {GOAL_READY_S:.1f} s after start (/readyz 200)"
    if "ours" not in ready:
        goals = [Goal(text, "n/a", "not measured")]
    else:
        figure = f"{ready['ours']:.1f} s"
        if "bare" in ready:
            figure += f" (a bare BentoML service, same workers: {ready['bare']:.1f} s)"
        if "mlflow" in ready:
            figure += f" (MLflow: {ready['mlflow']:.1f} s to /ping)"
        goals = [judged(text, figure, [at_most(ready["ours"], GOAL_READY_S, "s")])]
    for server, found in memory.items():
        ours = server == "ours"
        text = f"{server_name(server)} resident memory, whole process tree" + (
            f": <= {GOAL_RSS_MIB:,.0f} MiB" if ours else " (reported)"
        )
        rss = found["rss"] / MIB
        figure = (
            f"RSS {rss:,.0f} MiB summed over its processes"
            f" (PSS {found['pss'] / MIB:,.0f} MiB); the peak of after-ready and each cell's end"
        )
        goals.append(
            judged(text, figure, [at_most(rss, GOAL_RSS_MIB, "MiB")])
            if ours
            else Goal(text, "info", figure)
        )
    return goals


def preprocess_goal(parts: dict[str, Parts]) -> list[Goal]:
    """Preprocessing the photo-like upload in process (a goal), when that kind was measured."""
    if "photo" not in parts:
        return []
    text = f"preprocessing a photo-like upload in process: <= {GOAL_PHOTO_MS} ms"
    found = parts["photo"].preprocess_ms
    return [judged(text, f"{found:.3f} ms", [at_most(found, GOAL_PHOTO_MS, "ms")])]


def goals(
    cells: list[Cell],
    ready: dict[str, float],
    memory: dict[str, dict[str, int]],
    parts: dict[str, Parts] | None = None,
    ceiling: Ceiling | None = None,
) -> list[Goal]:
    """Every goal with its measured figure, verdict and shortfall."""
    found: list[Goal] = []
    parts = parts or {}
    for kind in SINGLE_IMAGE_KINDS:
        if any(cell.kind == kind for cell in cells):
            found.extend(single_image_goals(cells, kind, parts))
    return (
        found + preprocess_goal(parts) + batch_goals(cells, ceiling) + server_goals(ready, memory)
    )


def shares(by_worker: dict[str, int] | None) -> dict[str, float]:
    """Each worker's fraction of the requests counted; {} when none were."""
    total = sum((by_worker or {}).values())
    return {worker: count / total for worker, count in (by_worker or {}).items()} if total else {}


def shares_text(by_worker: dict[str, int] | None) -> str:
    """`1: 812 (51%), 2: 790 (49%)`: requests per worker index; '' when not counted."""
    found = shares(by_worker)
    return ", ".join(
        f"{worker}: {count:,} ({found.get(worker, 0):.0%})"
        for worker, count in (by_worker or {}).items()
    )


def server_name(server: str) -> str:
    return "BentoML (ours)" if server == "ours" else "mlflow models serve"


def cpu_text(cell: Cell) -> str:
    if not cell.cpu:
        return "n/a"
    return f"{cell.cpu['server']:.2f} / {cell.cpu['client']:.2f} / {cell.cpu['other']:.2f}"


def row(cell: Cell, cells: list[Cell], parts: dict[str, Parts]) -> str:
    """One table row; a failed cell says why in place of its figures."""
    head = (
        f"| {server_name(cell.server)} | {cell.kind} | `{cell.endpoint}`"
        f" | {cell.images_per_request} | {cell.concurrency}"
    )
    if cell.failure is not None:
        return head + f" | FAILED: {cell.failure[:FAILURE_CHARACTERS]} | | | | | | | | | | | |"
    ratio = ratio_for(cell, cells)
    cpu_ms = cell.server_cpu_ms_per_request
    rss = cell.memory.get("rss")
    parts_columns = " | ".join(parts_text(cell, cells, parts))
    return head + (
        f" | {cell.requests_per_s:,.0f} | {cell.images_per_s:,.0f}"
        f" | {cell.percentile(0.5):,.1f} | {cell.percentile(0.99):,.1f} | {cell.errors}"
        f" | {'' if ratio is None else f'{ratio:.1f}x'}"
        f" | {'' if cpu_ms is None else f'{cpu_ms:.2f}'} | {parts_columns} | {cpu_text(cell)}"
        f" | {'' if rss is None else f'{rss / MIB:,.0f}'} | {shares_text(cell.worker_requests)} |"
    )


def table(cells: list[Cell], parts: dict[str, Parts] | None = None) -> str:
    """The cells as a Markdown table; single-image cells of ours with the sum of their parts
    (ms: the floor's server CPU per request + preprocess + forward) and their server CPU as a
    multiple of it."""
    lines = [
        "| server | kind | endpoint | images/request | concurrency | req/s | images/s | p50 ms"
        " | p99 ms | errors | ours / MLflow | server CPU ms/request"
        " | sum of parts ms (floor + preprocess + forward) | CPU / parts"
        " | cores: server / client / other | server RSS MiB | requests by worker |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    return "\n".join(lines + [row(cell, cells, parts or {}) for cell in cells])


def goal_lines(found: list[Goal]) -> list[str]:
    """`- **MISS** goal: figures; short by ...` for each goal."""
    return [
        f"- **{goal.verdict}** {goal.goal}: {goal.measured}"
        + (f"; {goal.shortfall}" if goal.shortfall else "")
        for goal in found
    ]


def summary(found: list[Goal]) -> list[dict[str, Any]]:
    return [asdict(goal) for goal in found]


def progress(cell: Cell) -> str:
    """One line per cell, printed as soon as it is measured; errors sampled below it."""
    head = f"  {cell.server:6} {cell.kind:9} {cell.endpoint:16} x{cell.images_per_request:<4}"
    if cell.failure is not None:
        return f"{head} c={cell.concurrency:<3} FAILED, not loaded: {cell.failure[:200]}"
    spread = " + ".join(map(str, cell.cpu.get("server_processes", [])))
    return "\n".join(
        [
            f"{head} c={cell.concurrency:<3} {cell.requests_per_s:8,.0f} req/s"
            f" {cell.images_per_s:9,.0f} images/s  p50 {cell.percentile(0.5):6.1f} ms"
            f"  p99 {cell.percentile(0.99):6.1f} ms  errors {cell.errors}"
            f"  cores: {cpu_text(cell)} (by process: {spread})"
            + (
                f"  requests by worker: {shares_text(cell.worker_requests)}"
                if cell.worker_requests
                else ""
            ),
            *(f"      error: {sample}" for sample in cell.error_samples),
        ]
    )
