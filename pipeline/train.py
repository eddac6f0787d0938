"""Stage `train`: fit one model variant on `train`, validate on `val`, track it in MLflow.

Writes `models/<variant>/model.keras`, `models/<variant>/run.json` (MLflow run id and model URI),
the final metrics as DVC metrics and the per-epoch history as a CSV for `dvc plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import config, io, tracking
from pipeline.config import FitConfig, VariantConfig

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(x, y, class_names) of a prepared split."""
    with np.load(path) as data:
        return data["x"], data["y"], tuple(str(name) for name in data["class_names"])


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": value}, for MLflow params."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


def learning_rate(fit: FitConfig, steps_per_epoch: int):
    """A constant rate, or cosine decay to zero after an optional linear warm-up."""
    import keras

    if fit.schedule == "constant":
        return fit.learning_rate
    warmup_steps = fit.warmup_epochs * steps_per_epoch
    decay_steps = max(1, fit.epochs * steps_per_epoch - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            fit.learning_rate * 0.1,
            decay_steps,
            warmup_target=fit.learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(fit.learning_rate, decay_steps)


def make_optimizer(fit: FitConfig, steps_per_epoch: int):
    import keras

    rate = learning_rate(fit, steps_per_epoch)
    if fit.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=fit.momentum)
    if fit.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=fit.momentum)
    if fit.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=fit.weight_decay)
    return keras.optimizers.Adam(rate)


def compile_model(model: keras.Model, fit: FitConfig, *, train_size: int) -> None:
    """Attach optimizer, loss and metrics as the fit config says."""
    import keras

    steps_per_epoch = int(np.ceil(train_size / fit.batch_size))
    model.compile(
        optimizer=make_optimizer(fit, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=fit.label_smoothing),
        metrics=["accuracy"],
        jit_compile=fit.jit_compile,
    )


def training_data(x: np.ndarray, y: np.ndarray, fit: FitConfig):
    """A shuffled, batched, prefetched tf.data pipeline, with random shifts when asked."""
    import keras
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.shuffle(len(x), seed=fit.seed, reshuffle_each_iteration=True).batch(fit.batch_size)
    if fit.augment_shift:
        factor = fit.augment_shift / x.shape[1]
        shift = keras.Sequential(
            [
                keras.layers.Reshape((*x.shape[1:], 1)),
                keras.layers.RandomTranslation(factor, factor, fill_mode="constant", seed=fit.seed),
                keras.layers.Reshape(x.shape[1:]),
            ]
        )
        data = data.map(
            lambda images, labels: (shift(images, training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return data.prefetch(tf.data.AUTOTUNE)


def epoch_logger(on_epoch=None):
    """A callback that adds `epoch_seconds` and the current learning rate to each epoch's logs,
    then hands the logs to `on_epoch(epoch, logs)` (MLflow logging, progress output)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logs["epoch_seconds"] = time.perf_counter() - self._started
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            if on_epoch is not None:
                on_epoch(epoch, {key: float(value) for key, value in logs.items()})

    return EpochLogger()


def fit_model(
    model: keras.Model,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    fit: FitConfig,
    on_epoch=None,
) -> dict[str, list[float]]:
    """Fit a compiled model with early stopping on val_loss; return the per-epoch history."""
    import keras

    callbacks = [epoch_logger(on_epoch)]
    if fit.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=fit.early_stopping_patience, restore_best_weights=True
            )
        )
    history = model.fit(
        training_data(x_train, y_train, fit),
        validation_data=(x_val, y_val),
        batch_size=fit.batch_size,
        epochs=fit.epochs,
        callbacks=callbacks,
        # The tf.data pipeline already shuffles, each epoch anew.
        shuffle=False,
        verbose=0,
    )
    return {key: [float(value) for value in history.history[key]] for key in HISTORY_KEYS}


def pip_requirements() -> list[str]:
    """Pinned requirements for the logged model; listing them saves MLflow seconds of inference."""
    from importlib import metadata

    requirements = []
    for name in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mlflow"):
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def curves_figure(history: dict[str, list[float]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", loss_axis), ("accuracy", accuracy_axis)):
        axis.plot(epochs, history[key], label=f"train {key}")
        axis.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def train(
    *,
    variant: str,
    variant_config: VariantConfig,
    data_info: dict[str, Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
) -> tuple[keras.Model, dict[str, Any]]:
    """Build, fit and track one variant in an MLflow run; return the model and a run summary."""
    import keras
    import mlflow
    import mlflow.keras
    from mlflow.models import infer_signature

    from pipeline import devices, models

    fit = variant_config.fit
    keras.utils.set_random_seed(fit.seed)
    device = devices.configure(mixed_precision=fit.mixed_precision)
    model = models.build(variant_config.model, num_classes=y_train.shape[1])
    compile_model(model, fit, train_size=len(x_train))

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = mlflow.MlflowClient()
    experiment_id = tracking.get_or_create_experiment(client, data_info["dataset"])
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=variant, tags=tracking.run_tags(f"train@{variant}")
    ) as run:
        params = flatten(dataclasses.asdict(variant_config)) | flatten({"data": data_info})
        params |= {"variant": variant, "train_size": len(x_train), "val_size": len(x_val)}
        params |= {"model.parameters": model.count_params()} | device
        mlflow.log_params(params)

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            mlflow.log_metrics(
                {key: logs[key] for key in HISTORY_KEYS}, step=epoch, synchronous=False
            )
            log.info(
                "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  %.1fs",
                epoch + 1,
                fit.epochs,
                logs["loss"],
                logs["accuracy"],
                logs["val_loss"],
                logs["val_accuracy"],
                logs["epoch_seconds"],
            )

        started = time.perf_counter()
        history = fit_model(
            model,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            fit=fit,
            on_epoch=on_epoch,
        )
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=1024, verbose=0)
        summary_metrics = {
            "final_val_loss": float(val_loss),
            "final_val_accuracy": float(val_accuracy),
            "epochs_run": len(history["loss"]),
            "train_seconds": seconds,
        }
        mlflow.log_metrics(summary_metrics)

        lines: list[str] = []
        model.summary(print_fn=lines.append)
        mlflow.log_text("\n".join(lines), "model_summary.txt")
        mlflow.log_figure(
            curves_figure(history, f"{data_info['dataset']} {variant}"), "training_curves.png"
        )
        probabilities = model.predict(x_val[:8], verbose=0)
        model_info = mlflow.keras.log_model(
            model,
            name="model",
            signature=infer_signature(x_val[:8], probabilities),
            pip_requirements=pip_requirements(),
        )
    summary = {
        "variant": variant,
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "model_uri": model_info.model_uri,
        "tracking_uri": tracking.tracking_uri(),
        "history": history,
        "metrics": summary_metrics,
    }
    return model, summary


def history_csv(history: dict[str, list[float]]) -> str:
    rows = ["epoch," + ",".join(HISTORY_KEYS)]
    for epoch in range(len(history["loss"])):
        rows.append(
            f"{epoch + 1}," + ",".join(f"{history[key][epoch]:.6g}" for key in HISTORY_KEYS)
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, help="default: models/<variant>")
    parser.add_argument("--metrics", type=Path, help="default: metrics/train/<variant>.json")
    parser.add_argument("--plots", type=Path, help="default: plots/train/<variant>.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path("models") / args.variant
    metrics_path = args.metrics or Path("metrics/train") / f"{args.variant}.json"
    plots_path = args.plots or Path("plots/train") / f"{args.variant}.csv"

    params = config.load(args.params)
    if params.train is None or args.variant not in params.train.models:
        known = sorted(params.train.models) if params.train else []
        raise SystemExit(f"variant {args.variant!r} is not defined in train.models; known: {known}")
    variant_config = params.train.models[args.variant]
    meta = json.loads((args.data / "meta.json").read_text())
    data_info = {
        "dataset": meta["dataset"],
        "source": meta["source"]["kind"],
        "sha256": json.dumps(meta["sha256"], sort_keys=True),
        "content_sha256": io.digest(meta["sha256"]),
        "val_fraction": meta["val_fraction"],
        "split_seed": meta["seed"],
    }
    x_train, y_train, _ = load_split(args.data / "train.npz")
    x_val, y_val, _ = load_split(args.data / "val.npz")
    log.info("variant %s: train %s, val %s", args.variant, x_train.shape, x_val.shape)

    model, summary = train(
        variant=args.variant,
        variant_config=variant_config,
        data_info=data_info,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
    )
    io.save_keras(out / "model.keras", model)
    io.write_json(
        out / "run.json", {key: value for key, value in summary.items() if key != "history"}
    )
    io.write_json(
        metrics_path,
        summary["metrics"] | {"best_val_accuracy": max(summary["history"]["val_accuracy"])},
    )
    io.write_bytes(plots_path, history_csv(summary["history"]).encode())
    log.info(
        "model -> %s; MLflow run %s; metrics -> %s",
        out / "model.keras",
        summary["run_id"],
        metrics_path,
    )


if __name__ == "__main__":
    main()
