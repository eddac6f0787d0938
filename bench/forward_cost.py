"""What a variant costs to serve: multiply-accumulates per image and CPU time per forward pass.

    python bench/forward_cost.py                        # train.variants of params.yaml
    python bench/forward_cost.py --variants cnn,mlp,seed003_cnn --batch 256 --threads 1

Builds each variant from the params file (untrained weights cost the same as trained ones),
mirror-averaged where `model.test_time_flip` asks, traces it as serving does (a tf.function of
float32 (N, 28, 28) batches) and times calls of one image and of `--batch` images with the
threads one serving worker gets (`--threads`; with SERVING_WORKERS=2 on 2 cores that is 1). The
first variant is the baseline of the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name
from pipeline import config
from serving.model import traced


def multiply_accumulates(model) -> int:
    """Multiply-accumulates of one image through the conv and dense layers (the rest is noise)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            height, width = layer.output.shape[1:3]
            kh, kw, channels, multiplier = layer.depthwise_kernel.shape
            per_pixel = kh * kw * channels * multiplier + channels * multiplier * layer.filters
            total += height * width * per_pixel
        elif isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            total += height * width * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def cpu_milliseconds(function, images: np.ndarray) -> float:
    start = time.process_time()
    function(images)
    return 1000 * (time.process_time() - start)


def measure(variants: dict, *, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per variant: MACs/image, parameters, median CPU ms for 1 image and for `batch` images.

    The variants take turns call by call, so a slow moment of the host hits all of them.
    """
    from pipeline import models

    rng = np.random.default_rng(0)
    one, many = rng.random((1, 28, 28), np.float32), rng.random((batch, 28, 28), np.float32)
    built = {
        name: models.build(variant.model, num_classes=10) for name, variant in variants.items()
    }
    # What is served: with `model.test_time_flip`, the network runs on the image and its mirror.
    passes = {name: 2 if variant.model.test_time_flip else 1 for name, variant in variants.items()}
    served = {
        name: models.mirror_averaged(model) if passes[name] == 2 else model
        for name, model in built.items()
    }
    functions = {name: traced(model) for name, model in served.items()}
    for function in functions.values():
        function(one), function(many)  # trace both shapes' kernels once
    times = {name: {"one": [], "batch": []} for name in variants}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name]["one"].append(cpu_milliseconds(function, one))
            times[name]["batch"].append(cpu_milliseconds(function, many))
    return {
        name: {
            "macs": multiply_accumulates(built[name]) * passes[name],
            "parameters": built[name].count_params(),
            "one": statistics.median(times[name]["one"]),
            "batch": statistics.median(times[name]["batch"]),
        }
        for name in variants
    }


def report(results: dict[str, dict[str, float]], *, batch: int) -> None:
    base = next(iter(results.values()))
    print(
        f"{'variant':16s} {'M MACs/img':>10s} {'params':>9s} {'ms/1 img':>9s}"
        f" {f'ms/{batch} img':>11s} {'us/img':>7s} {'x MACs':>7s} {'x time':>7s}"
    )
    for name, row in results.items():
        print(
            f"{name:16s} {row['macs'] / 1e6:10.2f} {row['parameters']:9,d} {row['one']:9.2f}"
            f" {row['batch']:11.1f} {1000 * row['batch'] / batch:7.0f}"
            f" {row['macs'] / base['macs']:7.2f} {row['batch'] / base['batch']:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", help="comma-separated names (default: train.variants)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    params = config.load(args.params)
    names = args.variants.split(",") if args.variants else list(params.train.variants)
    unknown = sorted(set(names) - set(params.train.models))
    if unknown:
        raise SystemExit(f"not in train.models of {args.params}: {unknown}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"tensorflow {tf.__version__}; {args.threads} thread(s); median of {args.repeats}\n")
    variants = {name: params.train.models[name] for name in names}
    report(measure(variants, batch=args.batch, repeats=args.repeats), batch=args.batch)


if __name__ == "__main__":
    main()
