"""Stage `train`: fit one model variant on `train`, validate on `val`, track it in MLflow.

`train()` builds and fits (`pipeline.model.fitting`) and returns; `main()` reads the prepared data,
records the run through `tracking` and writes `models/<variant>/model.keras`,
`models/<variant>/run.json` (contracts.TrainedRun: MLflow run id and model URI), the final metrics
as DVC metrics (contracts.TrainMetrics) and the per-epoch history as a CSV for `dvc plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import config, contracts, io, tracking
from pipeline.config import VariantConfig
from pipeline.figures import curves_figure
from pipeline.model import fitting

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(x, y, class_names) of a prepared split."""
    with np.load(path) as data:
        return data["x"], data["y"], tuple(str(name) for name in data["class_names"])


def servable(
    trained: keras.Model, variant_config: VariantConfig, *, num_classes: int, train_size: int
) -> keras.Model:
    """The trained model rebuilt from stock Keras layers in float32 (and averaged with its mirror
    image when `model.test_time_flip` asks): what is measured, saved and served.

    Training computes in mixed precision where the machine has it and normalises batches with
    `pipeline.model.layers.FusedBatchNormalization`. A saved layer remembers its class and its
    policy,
    so without the rebuild the served model would need this package's layer to load, and would
    compute in bfloat16, emulated and slow on CPUs without bf16 instructions. The global policy
    goes back to float32. The copy gets its own optimizer, built on its own variables, with the
    trained one's state (step count, moments), so the saved model loads without a mismatch and a
    further `fit`, of the copy or of the loaded model, resumes where this one ended.
    """
    import keras

    from pipeline.model import architectures

    keras.mixed_precision.set_global_policy("float32")
    model = architectures.build(variant_config.model, num_classes=num_classes)
    model.set_weights(trained.get_weights())
    if variant_config.model.test_time_flip:
        model = architectures.mirror_averaged(model)
    fitting.compile_model(model, variant_config.fit, train_size=train_size)
    # Under float16 Keras wraps the optimizer to scale the loss; the state to keep is inside.
    learnt = getattr(trained.optimizer, "inner_optimizer", trained.optimizer)
    model.optimizer.build(model.trainable_variables)
    for mine, theirs in zip(model.optimizer.variables, learnt.variables, strict=True):
        mine.assign(theirs)
    return model


@dataclass(frozen=True)
class Trained:
    """A fitted variant: the model, its per-epoch history, how it ended, the device it used."""

    model: keras.Model
    history: dict[str, list[float]]
    metrics: contracts.TrainMetrics
    device: dict[str, str]


def train(
    *,
    variant_config: VariantConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Trained:
    """Build, compile and fit one variant from its seed; `on_epoch(epoch, logs)` sees each epoch.

    It trains with fused batch norm, in mixed precision where it can, and comes back in stock
    layers and float32 (`servable`)."""
    import keras

    from pipeline.model import architectures, devices, distribute

    fit = variant_config.fit
    keras.utils.set_random_seed(fit.seed)
    device = devices.configure(mixed_precision=fit.mixed_precision)
    # fit.distribute: built and compiled under MirroredStrategy (pipeline.model.distribute).
    with distribute.scope(fit) as replicas:
        device |= replicas
        model = architectures.build(
            variant_config.model, num_classes=y_train.shape[1], fused_batch_norm=True
        )
        fitting.compile_model(model, fit, train_size=len(x_train))
    started = time.perf_counter()
    history = fitting.fit_model(
        model,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        fit=fit,
        on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - started
    model = servable(model, variant_config, num_classes=y_train.shape[1], train_size=len(x_train))
    val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=1024, verbose=0)
    metrics = contracts.TrainMetrics(
        final_val_loss=float(val_loss),
        final_val_accuracy=float(val_accuracy),
        epochs_run=len(history["loss"]),
        train_seconds=seconds,
        best_val_accuracy=max(history["val_accuracy"]),
    )
    return Trained(model=model, history=history, metrics=metrics, device=device)


def run_params(
    variant: str, variant_config: VariantConfig, meta: contracts.PreparedMeta, **sizes: int
) -> dict[str, Any]:
    """The MLflow params of a training run: the variant's config and the data, flattened."""
    data = {
        "dataset": meta.dataset,
        "source": meta.source.kind,
        "sha256": json.dumps(meta.sha256, sort_keys=True),
        "content_sha256": meta.content_sha256,
        "val_fraction": meta.val_fraction,
        "split_seed": meta.seed,
    }
    params = tracking.flatten(dataclasses.asdict(variant_config)) | tracking.flatten({"data": data})
    return params | {"variant": variant} | sizes


def report_epoch(epoch: int, logs: dict[str, float], *, epochs: int) -> None:
    """Record one epoch in the active MLflow run and show progress."""
    tracking.log_epoch(epoch, logs, fitting.HISTORY_KEYS)
    log.info(
        "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  %.1fs",
        epoch + 1,
        epochs,
        logs["loss"],
        logs["accuracy"],
        logs["val_loss"],
        logs["val_accuracy"],
        logs["epoch_seconds"],
    )


def run_description(variant: str, variant_config: VariantConfig, meta: contracts.PreparedMeta):
    """What the run is, in words, for the MLflow UI."""
    model, fit = variant_config.model, variant_config.fit
    experiment = os.environ.get("DVC_EXP_NAME")
    return (
        f"Trains variant `{variant}` ({model.architecture}) of the DVC stage `train@{variant}`"
        + (f" in experiment `{experiment}`" if experiment else "")
        + f" on {meta.dataset} from {meta.source.kind} {meta.source.location}"
        f" ({meta.counts['train']} training, {meta.counts['val']} validation images; data"
        f" sha256 {meta.content_sha256[:12]}): {fit.optimizer}, batch {fit.batch_size},"
        f" {fit.epochs} epochs. `evaluate` adds the test metrics and may register the model."
    )


def history_csv(history: dict[str, list[float]]) -> str:
    rows = ["epoch," + ",".join(fitting.HISTORY_KEYS)]
    for epoch in range(len(history["loss"])):
        rows.append(
            f"{epoch + 1}," + ",".join(f"{history[key][epoch]:.6g}" for key in fitting.HISTORY_KEYS)
        )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's command line; dvc.yaml gives every path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared data folder")
    parser.add_argument("--out", type=Path, required=True, help="model.keras and run.json")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics (JSON)")
    parser.add_argument("--plots", type=Path, required=True, help="per-epoch history (CSV)")
    return parser.parse_args(argv)


def variant_config_of(params: config.Params, variant: str) -> VariantConfig:
    """The config of `variant`; SystemExit naming the known ones if train.models lacks it."""
    if params.train is None or variant not in params.train.models:
        known = sorted(params.train.models) if params.train else []
        raise SystemExit(f"variant {variant!r} is not defined in train.models; known: {known}")
    return params.train.models[variant]


def main(argv: list[str] | None = None) -> None:
    try:
        run_stage(parse_args(argv))
    except tracking.Stopped as stopped:
        log.error("train: %s; the MLflow run is marked KILLED, nothing was written", stopped)
        raise SystemExit(128 + stopped.signum) from None


def run_stage(args: argparse.Namespace) -> None:
    """Train the variant `args` names, track it, write its outputs."""
    from pipeline.model import devices

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    devices.import_tensorflow()
    params = config.load(args.params)
    variant_config = variant_config_of(params, args.variant)
    mirroring_warnings = params.mirroring_warnings(args.variant)
    for warning in mirroring_warnings:
        log.warning("WARNING: %s", warning)
    meta = contracts.PreparedMeta.read(args.data / contracts.PreparedMeta.file_name)
    x_train, y_train, _ = load_split(args.data / "train.npz")
    x_val, y_val, _ = load_split(args.data / "val.npz")
    log.info("variant %s: train %s, val %s", args.variant, x_train.shape, x_val.shape)

    with tracking.training_run(
        experiment=meta.dataset,
        run_name=tracking.run_name(args.variant),
        stage=f"train@{args.variant}",
        description=run_description(args.variant, variant_config, meta),
    ) as run:
        sizes = {"train_size": len(x_train), "val_size": len(x_val)}
        tracking.log_params(run_params(args.variant, variant_config, meta, **sizes))
        if mirroring_warnings:
            tracking.set_run_tags({tracking.MIRRORING_WARNING_TAG: " | ".join(mirroring_warnings)})
        tracking.log_datasets(
            run.run_id,
            tracking.dataset_inputs(
                name=meta.dataset,
                content_sha256=meta.content_sha256,
                source=meta.source,
                splits={"training": (x_train, y_train), "validation": (x_val, y_val)},
            ),
        )
        trained = train(
            variant_config=variant_config,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            on_epoch=functools.partial(report_epoch, epochs=variant_config.fit.epochs),
        )
        tracking.log_params({"model.parameters": trained.model.count_params()} | trained.device)
        model_uri = tracking.log_trained_model(
            trained.model,
            metrics=dataclasses.asdict(trained.metrics),
            figure=curves_figure(trained.history, f"{meta.dataset} {args.variant}"),
            example=x_val[:8],
        )
    write_outputs(
        args, trained, run_id=run.run_id, experiment_id=run.experiment_id, model_uri=model_uri
    )


def write_outputs(
    args: argparse.Namespace, trained: Trained, *, run_id: str, experiment_id: str, model_uri: str
) -> None:
    """The stage's outputs: the model, its run record (for evaluate), metrics and curves."""
    io.save_keras(args.out / "model.keras", trained.model)
    contracts.TrainedRun(
        variant=args.variant,
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=model_uri,
        tracking_uri=tracking.tracking_uri(),
        metrics=trained.metrics,
    ).write(args.out / contracts.TrainedRun.file_name)
    trained.metrics.write(args.metrics)
    io.write_bytes(args.plots, history_csv(trained.history).encode())
    log.info(
        "model -> %s; MLflow run %s; metrics -> %s", args.out / "model.keras", run_id, args.metrics
    )


if __name__ == "__main__":
    main()
