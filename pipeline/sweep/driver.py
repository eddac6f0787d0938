"""A hyperparameter sweep of one variant with Ray Tune, on a Ray cluster (not a DVC stage).

    python -m pipeline.sweep --variant cnn [--address HOST:PORT] [--apply]

Reads `sweep:` and the variant from params.yaml (every bad key is an error before any work),
puts the prepared train and validation splits in Ray's object store, runs the trials
(`pipeline.sweep.trial`) with ASHA early stopping on validation accuracy, records the sweep as
an MLflow run with one child run per trial, and writes `sweeps/<variant>/best.yaml` and
`trials.csv` (`pipeline.sweep.record`). `--apply` then runs the `dvc exp run -S ...` command in
best.yaml, so the winner is trained, evaluated and gated like any other experiment.
Needs the `scale` extra (Ray); `dvc repro` never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import config, contracts
from pipeline.sweep import settings as sweep_settings
from pipeline.sweep import space as sweep_space
from pipeline.sweep.settings import SweepConfig

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="a name from train.models")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="sweeps/<variant>/...")
    parser.add_argument("--address", help="a running Ray cluster (overrides sweep.address)")
    parser.add_argument(
        "--tracking-uri", help="MLflow for the trials (overrides sweep.tracking_uri)"
    )
    parser.add_argument("--apply", action="store_true", help="run best.yaml's dvc exp run")
    return parser.parse_args(argv)


def prepare_environment(address: str | None) -> None:
    """Ray's settings from the environment, before Ray is imported (it reads them once)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None and not os.environ.get("RAY_AUTH_TOKEN"):
        # A local cluster gets token auth (Ray's default from 2.59); a token of its own in the
        # environment, which its processes inherit, writes nothing to ~/.ray.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@contextlib.contextmanager
def cluster(sweep: SweepConfig, address: str | None) -> Iterator[dict[str, Any]]:
    """Connected to the cluster at `address`, or to a local one started (and stopped) here."""
    import ray

    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        options["_node_ip_address"] = sweep.local_node_ip
    else:
        # This package travels with the job, so the other machines need only its dependencies.
        options["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
    ray.init(address=address or "local", **options)
    try:
        yield {"nodes": len([n for n in ray.nodes() if n["Alive"]])} | {
            key: float(value)
            for key, value in ray.cluster_resources().items()
            if key in ("CPU", "GPU")
        }
    finally:
        ray.shutdown()


def tuner(sweep: SweepConfig, trainable, storage: Path, outcomes: dict, *, max_epochs: int):
    """Ray Tune's Tuner for `sweep`: random (or grid) search, ASHA over epochs up to
    `max_epochs` (the longest fit a trial may get), one process per trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipeline.sweep import record as sweep_record

    scheduler = None
    if sweep.early_stopping.enabled:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            # One past the last epoch: at max_t ASHA ends every trial, before its fit returns.
            max_t=max_epochs + 1,
            grace_period=sweep.early_stopping.grace_period,
            reduction_factor=sweep.early_stopping.reduction_factor,
        )
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=sweep_space.tune_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            num_samples=sweep.trials,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=sweep.seed),
            max_concurrent_trials=sweep.max_concurrent or None,
            # A fresh process per trial: a failed or stopped fit leaves nothing behind.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name="sweep",
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[sweep_record.callback(outcomes)],
            verbose=0,
        ),
    )


def load_data(folder: Path) -> tuple[dict[str, Any], contracts.PreparedMeta]:
    """The prepared train and validation splits (never test) and their record."""
    from pipeline.stages import train

    meta = contracts.PreparedMeta.read(folder / contracts.PreparedMeta.file_name)
    x_train, y_train, _ = train.load_split(folder / "train.npz")
    x_val, y_val, _ = train.load_split(folder / "val.npz")
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}, meta


def parent_run(client, *, experiment_id: str, variant: str, sweep: SweepConfig, info: dict) -> str:
    """The sweep's MLflow run: the settings, the cluster it ran on."""
    from mlflow.entities import Param

    from pipeline import tracking

    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{variant}",
        tags=tracking.run_tags(f"sweep@{variant}") | {"sweep.kind": "sweep"},
    )
    settings = tracking.flatten({"sweep": dataclasses.asdict(sweep)}) | {"variant": variant}
    settings |= {f"cluster.{key}": value for key, value in info.items()}
    params = [Param(key, str(value)[:6000]) for key, value in settings.items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def run_sweep(args: argparse.Namespace) -> dict[str, Any] | None:
    """Check, run, record; best.yaml's content (None when no trial completed)."""
    from pipeline.stages import train

    params = config.load(args.params)
    sweep = sweep_settings.of(params, str(args.params))
    variant_config = train.variant_config_of(params, args.variant)
    if not sweep.space:
        raise config.ConfigError(f"{args.params}: sweep.space is empty: name keys to vary")
    sweep_space.check(args.variant, variant_config, sweep.space)
    epochs = sweep.space.get("fit.epochs")
    max_epochs = max([variant_config.fit.epochs, *(epochs.extremes() if epochs else ())])
    address = args.address or sweep.address
    prepare_environment(address)
    import mlflow
    from ray import tune

    from pipeline import tracking
    from pipeline.sweep import record as sweep_record
    from pipeline.sweep import trial as sweep_trial

    data, meta = load_data(args.data)
    uri = args.tracking_uri or sweep.tracking_uri or tracking.tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment_id = tracking.get_or_create_experiment(client, meta.dataset)
    outcomes: dict[str, sweep_record.Outcome] = {}
    with cluster(sweep, address) as info, tempfile.TemporaryDirectory() as storage:
        log.info("sweep of %s on %s: %d draws; MLflow %s", args.variant, info, sweep.trials, uri)
        parent = parent_run(
            client, experiment_id=experiment_id, variant=args.variant, sweep=sweep, info=info
        )
        context = sweep_trial.TrialContext(
            args.variant, variant_config, uri, experiment_id, parent, sweep.cpus_per_trial
        )
        # with_parameters puts the arrays in Ray's object store once; every node reads them there.
        trainable = tune.with_parameters(sweep_trial.run_trial, data=data, context=context)
        try:
            tuner(sweep, trainable, Path(storage), outcomes, max_epochs=max_epochs).fit()
        finally:
            sweep_record.reconcile(client, outcomes, parent_run_id=parent, context=context)
    order = sweep_record.ranked(outcomes)
    chosen = sweep_record.best(order, variant=args.variant, parent_run_id=parent)
    folder = args.out / args.variant
    sweep_record.write(folder, order=order, chosen=chosen)
    sweep_record.log_parent(client, parent, order=order, folder=folder)
    client.set_terminated(parent, "FINISHED")
    for rank, outcome in enumerate(order, 1):
        log.info(
            "%d. %s %s val_acc=%s on %s",
            rank,
            outcome.trial_id,
            outcome.status,
            outcome.val_accuracy,
            outcome.node_ip,
        )
    return chosen


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        chosen = run_sweep(args)
    except config.ConfigError as error:
        raise SystemExit(f"sweep: {error}") from None
    if chosen is None:
        raise SystemExit("sweep: no trial completed; see trials.csv and the MLflow sweep run")
    log.info(
        "best: %s (val_accuracy %.4f); adopt it with:\n  %s",
        chosen["trial_id"],
        chosen["val_accuracy"],
        chosen["command_text"],
    )
    if args.apply:
        subprocess.run(chosen["command"], check=True)


if __name__ == "__main__":
    main()
