"""What the sweep's driver records: each trial's outcome (from Tune's callbacks and the trial's
own MLflow run), the ranking, the sweep's MLflow run, and the result files:

- `sweeps/<variant>/best.yaml`: the best trial by validation accuracy, its overrides and the
  `dvc exp run -S ...` command that adopts them;
- `sweeps/<variant>/trials.csv`: every trial, ranked.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.sweep import space as sweep_space
from pipeline.sweep.trial import (
    ERROR_TAG,
    FIT_DONE_TAG,
    NODE_ID_TAG,
    NODE_IP_TAG,
    STATUS_TAG,
    TRIAL_TAG,
)

COMPLETED, STOPPED, FAILED = "completed", "stopped early", "failed"
ORDER = {COMPLETED: 0, STOPPED: 1, FAILED: 2}


@dataclass
class Outcome:
    """One trial as the driver saw it."""

    trial_id: str
    overrides: dict[str, Any]
    started: float = 0.0
    ended: float = 0.0
    status: str = "running"
    epochs: int = 0
    val_accuracy: float | None = None  # the best epoch's
    error: str = ""
    run_id: str = ""
    node_id: str = ""
    node_ip: str = ""
    fit_seconds: float | None = None
    trial_seconds: float | None = None
    history: list[float] = field(default_factory=list)

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.ended - self.started)


def callback(outcomes: dict[str, Outcome]):
    """A Tune callback that fills `outcomes` as trials start, report, end and fail."""
    from ray import tune

    class Recorder(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            overrides = {key: sweep_space.plain(value) for key, value in trial.config.items()}
            outcomes[trial.trial_id] = Outcome(trial.trial_id, overrides, started=time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            outcome = outcomes[trial.trial_id]
            outcome.epochs = int(result.get("epoch", outcome.epochs))
            outcome.history.append(float(result["val_accuracy"]))
            outcome.val_accuracy = max(outcome.history)
            outcome.node_ip = str(result.get("node_ip", outcome.node_ip))

        def on_trial_complete(self, iteration, trials, trial, **info):
            outcomes[trial.trial_id].ended = time.time()
            outcomes[trial.trial_id].status = COMPLETED

        def on_trial_error(self, iteration, trials, trial, **info):
            outcome = outcomes[trial.trial_id]
            outcome.ended, outcome.status = time.time(), FAILED
            outcome.error = error_text(trial)

    return Recorder()


def error_text(trial: Any) -> str:
    """The last line of the trial's error, as Tune kept it."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "the trial's worker or node was lost")[:2000]


def reconcile(client: Any, outcomes: dict[str, Outcome], *, parent_run_id: str, context) -> None:
    """Give every trial's MLflow run its final status: completed (fit done), stopped early
    (ASHA ended it) or failed; a trial that died before making its run gets one now."""
    from mlflow.entities import Param

    runs = client.search_runs(
        [context.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10000,
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in runs}
    for outcome in outcomes.values():
        run = by_trial.get(outcome.trial_id)
        if run is None:
            created = client.create_run(
                context.experiment_id,
                run_name=f"{context.variant}-{outcome.trial_id}",
                tags={"mlflow.parentRunId": parent_run_id, TRIAL_TAG: outcome.trial_id},
            )
            params = [Param(f"sweep.{k}", str(v)) for k, v in outcome.overrides.items()]
            client.log_batch(created.info.run_id, params=params)
            run = client.get_run(created.info.run_id)
        tags = run.data.tags
        outcome.run_id = run.info.run_id
        outcome.node_id = tags.get(NODE_ID_TAG, "")
        outcome.node_ip = tags.get(NODE_IP_TAG, outcome.node_ip)
        outcome.fit_seconds = run.data.metrics.get("train_seconds")
        outcome.trial_seconds = run.data.metrics.get("trial_seconds")
        # ASHA may end a trial at its last epoch's report, before its fit returns: it ran in full.
        full = outcome.epochs >= int(
            outcome.overrides.get("fit.epochs", context.variant_config.fit.epochs)
        )
        if outcome.status == COMPLETED and tags.get(FIT_DONE_TAG) != "true" and not full:
            outcome.status = STOPPED
        elif outcome.status not in (COMPLETED, FAILED):
            outcome.status, outcome.error = FAILED, outcome.error or "the sweep ended first"
        if outcome.status == FAILED and ERROR_TAG not in tags:
            client.set_tag(outcome.run_id, ERROR_TAG, outcome.error or "unknown")
        client.set_tag(outcome.run_id, STATUS_TAG, outcome.status)
        if outcome.val_accuracy is not None:
            client.log_metric(outcome.run_id, "best_val_accuracy", outcome.val_accuracy)
        final = {COMPLETED: "FINISHED", STOPPED: "KILLED", FAILED: "FAILED"}[outcome.status]
        client.set_terminated(outcome.run_id, final)


def ranked(outcomes: dict[str, Outcome]) -> list[Outcome]:
    """Completed trials first, then stopped ones, then failed; each by best validation
    accuracy. A stopped trial never ran its full budget, so it cannot be the winner."""
    return sorted(
        outcomes.values(),
        key=lambda o: (ORDER[o.status], -(o.val_accuracy or 0.0), o.trial_id),
    )


COLUMNS = (
    "rank",
    "trial_id",
    "status",
    "val_accuracy",
    "epochs",
    "node_ip",
    "node_id",
    "wall_seconds",
    "fit_seconds",
    "trial_seconds",
    "run_id",
    "overrides",
    "error",
)


def table(order: list[Outcome]) -> str:
    """The ranking as CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, o in enumerate(order, 1):
        writer.writerow(
            [
                rank,
                o.trial_id,
                o.status,
                "" if o.val_accuracy is None else f"{o.val_accuracy:.6f}",
                o.epochs,
                o.node_ip,
                o.node_id,
                f"{o.wall_seconds:.2f}",
                "" if o.fit_seconds is None else f"{o.fit_seconds:.2f}",
                "" if o.trial_seconds is None else f"{o.trial_seconds:.2f}",
                o.run_id,
                yaml.safe_dump(o.overrides, default_flow_style=True, width=10**6).strip(),
                o.error,
            ]
        )
    return buffer.getvalue()


def best(order: list[Outcome], *, variant: str, parent_run_id: str) -> dict[str, Any] | None:
    """best.yaml's content, or None when no trial completed."""
    if not order or order[0].status != COMPLETED:
        return None
    winner = order[0]
    command = sweep_space.dvc_command(variant, winner.overrides)
    return {
        "variant": variant,
        "trial_id": winner.trial_id,
        "val_accuracy": winner.val_accuracy,
        "epochs": winner.epochs,
        "overrides": {key: sweep_space.plain(v) for key, v in winner.overrides.items()},
        "mlflow_run_id": winner.run_id,
        "sweep_run_id": parent_run_id,
        "command": command,
        "command_text": sweep_space.shell_text(command),
    }


def write(folder: Path, *, order: list[Outcome], chosen: dict[str, Any] | None) -> None:
    """trials.csv, and best.yaml when a trial completed (a stale one is removed otherwise)."""
    from pipeline import io as pipeline_io

    pipeline_io.write_bytes(folder / "trials.csv", table(order).encode())
    if chosen is None:
        (folder / "best.yaml").unlink(missing_ok=True)
        return
    text = yaml.safe_dump(chosen, sort_keys=False, width=10**6)
    pipeline_io.write_bytes(folder / "best.yaml", text.encode())


def log_parent(client: Any, run_id: str, *, order: list[Outcome], folder: Path) -> None:
    """The ranking on the sweep's run: counts, the best accuracy, the files, a table note."""
    counts = {status: sum(o.status == status for o in order) for status in ORDER}
    client.log_metric(run_id, "trials_completed", counts[COMPLETED])
    client.log_metric(run_id, "trials_stopped_early", counts[STOPPED])
    client.log_metric(run_id, "trials_failed", counts[FAILED])
    if order and order[0].val_accuracy is not None and order[0].status == COMPLETED:
        client.log_metric(run_id, "best_val_accuracy", order[0].val_accuracy)
        client.set_tag(run_id, "sweep.best_trial", order[0].trial_id)
        client.set_tag(run_id, "sweep.best_run_id", order[0].run_id)
    lines = [
        "| rank | trial | status | val_accuracy | node | overrides |",
        "|---|---|---|---|---|---|",
    ]
    for rank, o in enumerate(order, 1):
        accuracy = "" if o.val_accuracy is None else f"{o.val_accuracy:.4f}"
        lines.append(
            f"| {rank} | {o.trial_id} | {o.status} | {accuracy} | {o.node_ip} | {o.overrides} |"
        )
    client.set_tag(run_id, "mlflow.note.content", "\n".join(lines)[:60000])
    for name in ("trials.csv", "best.yaml"):
        if (folder / name).exists():
            client.log_artifact(run_id, str(folder / name))
