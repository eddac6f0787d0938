"""One trial of a sweep, as it runs in a Ray worker: `pipeline.stages.train.train` on the data the
driver put in Ray's object store, each epoch reported to Tune (for ASHA) and logged to the
trial's MLflow run, a child of the sweep's run. It reads no file and never sees the test split.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import VariantConfig

# Tags every trial's run carries; the driver reads them back (pipeline.sweep.record).
TRIAL_TAG = "sweep.trial_id"
STATUS_TAG = "sweep.status"
NODE_ID_TAG = "sweep.node_id"
NODE_IP_TAG = "sweep.node_ip"
FIT_DONE_TAG = "sweep.fit_done"
ERROR_TAG = "sweep.error"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: the variant, where to log, which run is the parent."""

    variant: str
    variant_config: VariantConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    # TensorFlow's thread pools are sized to the trial's CPUs: trials sharing a machine would
    # otherwise each start one thread per core and slow each other down.
    cpus: float = 1.0


def trial_params(context: TrialContext, overrides: dict[str, Any]) -> dict[str, str]:
    """The trial's MLflow params: its whole variant config, flattened, and the trial's values."""
    from pipeline import tracking
    from pipeline.sweep import space as sweep_space

    variant_config = sweep_space.trial_variant(context.variant, context.variant_config, overrides)
    params = tracking.flatten(dataclasses.asdict(variant_config))
    params |= {f"sweep.{key}": sweep_space.plain(value) for key, value in overrides.items()}
    return {key: str(value)[:6000] for key, value in params.items()} | {"variant": context.variant}


def start_run(client: Any, context: TrialContext, trial_id: str, overrides: dict) -> str:
    """Create the trial's child run, tagged with where it runs; its id."""
    import ray

    tags = {
        "mlflow.parentRunId": context.parent_run_id,
        TRIAL_TAG: trial_id,
        STATUS_TAG: "running",
        NODE_ID_TAG: ray.get_runtime_context().get_node_id(),
        NODE_IP_TAG: ray.util.get_node_ip_address(),
    }
    run = client.create_run(
        context.experiment_id, run_name=f"{context.variant}-{trial_id}", tags=tags
    )
    from mlflow.entities import Param

    params = [Param(key, value) for key, value in trial_params(context, overrides).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def epoch_reporter(client: Any, run_id: str):
    """The callback that logs an epoch to the trial's run and reports it to Tune (for ASHA)."""
    from mlflow.entities import Metric
    from ray import tune

    from pipeline.model import fitting

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        # Logged synchronously: a node may vanish at any time, and what was logged must stay.
        now = int(time.time() * 1000)
        metrics = [Metric(key, logs[key], now, epoch) for key in fitting.HISTORY_KEYS]
        client.log_batch(run_id, metrics=metrics)
        tune.report(
            {
                "val_accuracy": logs["val_accuracy"],
                "val_loss": logs["val_loss"],
                "epoch": epoch + 1,
                "epoch_seconds": logs["epoch_seconds"],
            }
        )

    return on_epoch


def run_trial(overrides: dict[str, Any], *, data: dict[str, np.ndarray], context: TrialContext):
    """Ray Tune's function trainable: fit the variant with `overrides`, report every epoch."""
    entered = time.perf_counter()
    import mlflow
    from mlflow.entities import Metric
    from ray import tune

    from pipeline.model import devices
    from pipeline.stages import train
    from pipeline.sweep import space as sweep_space

    devices.import_tensorflow()
    import tensorflow as tf

    threads = max(1, int(context.cpus))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    client = mlflow.MlflowClient(context.tracking_uri)
    trial_id = tune.get_context().get_trial_id()
    run_id = start_run(client, context, trial_id, overrides)

    on_epoch = epoch_reporter(client, run_id)
    try:
        variant_config = sweep_space.trial_variant(
            context.variant, context.variant_config, overrides
        )
        trained = train.train(
            variant_config=variant_config,
            x_train=data["x_train"],
            y_train=data["y_train"],
            x_val=data["x_val"],
            y_val=data["y_val"],
            on_epoch=on_epoch,
        )
    except Exception as error:
        client.set_tag(run_id, ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])
        client.set_tag(run_id, STATUS_TAG, "failed")
        client.set_terminated(run_id, "FAILED")
        raise
    # The trial's own time, from inside its process: Tune's wall time minus this is Ray's part.
    metrics = dataclasses.asdict(trained.metrics) | {"trial_seconds": time.perf_counter() - entered}
    client.log_batch(
        run_id,
        metrics=[
            Metric(key, float(value), int(time.time() * 1000), 0) for key, value in metrics.items()
        ],
    )
    client.set_tag(run_id, FIT_DONE_TAG, "true")
    client.set_terminated(run_id, "FINISHED")
