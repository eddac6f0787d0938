"""Training throughput: the pipeline's training function vs a bare `model.fit`, same process.

    python bench/train_throughput.py [--variant cnn] [--images 20000] [--epochs 2] [--repeats 3]
    python bench/train_throughput.py --options     # also time batch norm, bf16, batch size, XLA

Both sides fit the same compiled model on the same data; the pipeline side goes through
`pipeline.model.fitting.fit_model` (tf.data input, per-epoch callback) inside an MLflow run that
logs every epoch to a throwaway SQLite store, as the train stage does. Prints images/s of each and
the ratio (goal: >= 0.97, i.e. tracking and the rest cost under 3%).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name
from pipeline import config
from pipeline.data import datasets, idx


def load_images(count: int, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real training images: data/prepared when present, else the system Fashion-MNIST, else
    synthetic ones (throughput does not depend on the pixels)."""
    if (prepared / "train.npz").exists():
        with np.load(prepared / "train.npz") as data:
            return data["x"][:count], data["y"][:count]
    system = Path("/usr/share/datasets/fashion-mnist")
    if system.is_dir():
        images = idx.read(system / (datasets.FILES["train_images"] + ".gz"))[:count]
        labels = idx.read(system / (datasets.FILES["train_labels"] + ".gz"))[:count]
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count)
    return images.astype(np.float32) / 255, np.eye(10, dtype=np.float32)[labels]


def compiled_model(variant: config.VariantConfig, train_size: int, *, fused_batch_norm=True):
    """The variant as training builds it (fused batch norm), compiled."""
    from pipeline.model import architectures, fitting

    model = architectures.build(variant.model, num_classes=10, fused_batch_norm=fused_batch_norm)
    fitting.compile_model(model, variant.fit, train_size=train_size)
    return model


def time_bare(model, x, y, x_val, y_val, fit: config.FitConfig, epochs: int) -> float:
    """A plain `model.fit` on the pipeline's input (shuffled batches, no autotuning), without its
    callbacks and MLflow: what the ratio measures is what the pipeline adds to a fit."""
    from pipeline.model import fitting

    data = fitting.training_data(x, y, fit)
    val = fitting.batched(x_val, y_val, fit.batch_size)
    started = time.perf_counter()
    model.fit(data, epochs=epochs, validation_data=val, shuffle=False, verbose=0)
    return time.perf_counter() - started


def time_pipeline(model, x, y, x_val, y_val, fit: config.FitConfig, epochs: int) -> float:
    import mlflow

    from pipeline.model import fitting

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        mlflow.log_metrics(
            {key: logs[key] for key in fitting.HISTORY_KEYS}, step=epoch, synchronous=False
        )

    fit = dataclasses.replace(fit, epochs=epochs, early_stopping_patience=0)
    started = time.perf_counter()
    with mlflow.start_run():
        fitting.fit_model(
            model, x_train=x, y_train=y, x_val=x_val, y_val=y_val, fit=fit, on_epoch=on_epoch
        )
    return time.perf_counter() - started


def compare(args, variant: config.VariantConfig, x, y, x_val, y_val) -> None:
    import keras

    from pipeline.model import fitting

    keras.utils.set_random_seed(0)
    fit = variant.fit
    if not set_policy(fit):
        fit = dataclasses.replace(fit, mixed_precision=False)
        print("no mixed-precision support here: timing float32")
    model = compiled_model(dataclasses.replace(variant, fit=fit), len(x))
    # One warm-up epoch on the same kind of input traces the train step for both sides.
    warm_up = slice(fit.batch_size * 4)
    model.fit(fitting.training_data(x[warm_up], y[warm_up], fit), shuffle=False, verbose=0)
    bare, pipeline = [], []
    for repeat in range(args.repeats):
        # Alternate the order so neither side always runs on a warmer machine.
        order = (("bare", bare), ("pipeline", pipeline))
        for name, times in order if repeat % 2 == 0 else order[::-1]:
            timer = time_bare if name == "bare" else time_pipeline
            times.append(timer(model, x, y, x_val, y_val, fit, args.epochs))
    images = len(x) * args.epochs
    bare_rate = images / statistics.median(bare)
    pipeline_rate = images / statistics.median(pipeline)
    print(f"\n{args.variant}: {len(x)} images x {args.epochs} epochs, median of {args.repeats}")
    print(f"  bare model.fit       {bare_rate:9.0f} images/s")
    print(f"  pipeline fit_model   {pipeline_rate:9.0f} images/s   (MLflow logging every epoch)")
    ratio = pipeline_rate / bare_rate
    print(
        f"  ratio pipeline/bare  {ratio:9.3f}   goal >= 0.97: {'PASS' if ratio >= 0.97 else 'MISS'}"
    )


def set_policy(fit: config.FitConfig) -> bool:
    """The precision policy training would use for `fit` (`devices.configure`); False when
    mixed precision was asked for and this machine falls back to float32."""
    from pipeline.model import devices

    policy = devices.configure(mixed_precision=fit.mixed_precision)["precision_policy"]
    return policy != "float32" or not fit.mixed_precision


def options(args, variant: config.VariantConfig, x, y) -> None:
    """Images/s of a bare fit under each speed option, against the variant's own settings."""
    import keras

    from pipeline.model import fitting

    base = variant.fit
    # (label, fit settings changed, fused batch norm as training builds it)
    choices = [
        ("as configured", {}, True),
        ("Keras's batch norm", {}, False),
        ("float32", {"mixed_precision": False}, True),
        ("float32, Keras's BN", {"mixed_precision": False}, False),
        ("bf16 mixed precision", {"mixed_precision": True}, True),
        ("batch 64", {"batch_size": 64}, True),
        ("batch 256", {"batch_size": 256}, True),
        ("XLA jit_compile", {"jit_compile": True}, True),
    ]
    print(f"\n{args.variant}: bare model.fit, {len(x)} images, 1 timed epoch after 1 warm-up")
    baseline = None
    for label, change, fused in choices:
        fit = dataclasses.replace(base, **change)
        if not set_policy(fit):
            print(f"  {label:<22} skipped: no mixed-precision support here")
            continue
        model = compiled_model(
            dataclasses.replace(variant, fit=fit), len(x), fused_batch_norm=fused
        )
        # Batches as the pipeline feeds them, without tf.data's autotuning: arrays handed to
        # `fit` become autotuned datasets whose teardown can stall an epoch for seconds, which
        # once read as x0.61 for three options at once.
        warm_up = fitting.batched(x[: fit.batch_size * 4], y[: fit.batch_size * 4], fit.batch_size)
        model.fit(warm_up, shuffle=False, verbose=0)
        data = fitting.batched(x, y, fit.batch_size)
        started = time.perf_counter()
        model.fit(data, epochs=1, shuffle=False, verbose=0)
        rate = len(x) / (time.perf_counter() - started)
        baseline = baseline or rate
        print(f"  {label:<22} {rate:8.0f} images/s   x{rate / baseline:.2f}")
    keras.mixed_precision.set_global_policy("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="cnn")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--options", action="store_true", help="also time the speed options")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    params = config.load(args.params)
    variant = params.train.models[args.variant]
    x, y = load_images(args.images + 2000, args.prepared)
    x, y, x_val, y_val = x[2000:], y[2000:], x[:2000], y[:2000]

    import keras
    import mlflow
    import tensorflow as tf

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, mlflow {mlflow.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        mlflow.set_experiment("bench")
        compare(args, variant, x, y, x_val, y_val)
    if args.options:
        options(args, variant, x, y)


if __name__ == "__main__":
    main()
