"""What a variant costs to serve: multiply-accumulates per image and CPU time per forward pass,
in Keras (traced) and as the ONNX files the service runs (float32 and int8), in one process.

    python bench/forward_cost.py                        # train.variants of params.yaml
    python bench/forward_cost.py --variants cnn,mlp,seed003_cnn --batch 256 --threads 1

Builds each variant from the params file (untrained weights cost the same as trained ones),
mirror-averaged where `model.test_time_flip` asks and temperature-scaled, as `evaluate`
registers it. Keras runs it traced (a tf.function of float32 (N, 28, 28) batches: the fastest
way Keras has, and what the service ran before ONNX); ONNX Runtime runs its export
(`pipeline.model.onnx_export`) and the int8 file quantized from it, in sessions set up as the
service sets them up (`serving.model.open_session`). Each times calls of one image and of `--batch`
images with the threads one serving worker gets (`--threads`; with SERVING_WORKERS=2 on 2 cores
that is 1). Ratios: each runtime against Keras for the same variant (x faster), and each
variant's Keras time against the first variant's.
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

RUNTIMES = ("keras", "onnx fp32", "onnx int8")


def traced(model):
    """`model` at inference as a traced function of float32 (N, 28, 28) batches: with a fixed
    signature a call costs a fraction of `model.predict`'s."""
    import tensorflow as tf

    return tf.function(
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)],
    )


def onnx_functions(model, folder: Path, *, threads: int, calibration: np.ndarray) -> dict:
    """The model's float32 ONNX export and its int8 quantization, as functions of images."""
    from pipeline.model import int8, onnx_export
    from serving.model import open_session

    fp32 = onnx_export.export(model, folder / onnx_export.FP32_FILE)
    int8_file = int8.quantize(fp32, folder / onnx_export.INT8_FILE, calibration)
    functions = {}
    for runtime, path in (("onnx fp32", fp32), ("onnx int8", int8_file)):
        session = open_session(path, threads=threads)
        name = session.get_inputs()[0].name
        functions[runtime] = lambda images, s=session, n=name: s.run(None, {n: images})[0]
    return functions


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


def served_models(variants: dict) -> dict:
    """Each variant as `evaluate` registers it: mirror-averaged where asked, then calibrated."""
    from pipeline.model import architectures, calibration

    built = {
        name: architectures.build(variant.model, num_classes=10)
        for name, variant in variants.items()
    }
    served = {
        name: architectures.mirror_averaged(built[name])
        if variant.model.test_time_flip
        else built[name]
        for name, variant in variants.items()
    }
    return built, {name: calibration.calibrated_model(m, 1.2) for name, m in served.items()}


def measure(
    variants: dict, *, batch: int, repeats: int, threads: int, calibration: np.ndarray
) -> dict[str, dict[str, float]]:
    """Per variant: MACs/image, parameters, and per runtime the median CPU ms for 1 image and
    for `batch` images. Variants and runtimes take turns call by call, so a slow moment of the
    host hits all of them."""
    import tempfile

    rng = np.random.default_rng(0)
    one, many = rng.random((1, 28, 28), np.float32), rng.random((batch, 28, 28), np.float32)
    built, served = served_models(variants)
    functions = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, model in served.items():
            folder = Path(scratch) / name
            functions[name] = {"keras": traced(model)} | onnx_functions(
                model, folder, threads=threads, calibration=calibration
            )
    for runtimes in functions.values():
        for function in runtimes.values():
            function(one), function(many)  # trace both shapes' kernels once
    times = {(name, runtime): {"one": [], "batch": []} for name in variants for runtime in RUNTIMES}
    for _ in range(repeats):
        for name, runtimes in functions.items():
            for runtime, function in runtimes.items():
                times[name, runtime]["one"].append(cpu_milliseconds(function, one))
                times[name, runtime]["batch"].append(cpu_milliseconds(function, many))
    results = {}
    for name in variants:
        passes = 2 if variants[name].model.test_time_flip else 1
        row = {"macs": multiply_accumulates(built[name]) * passes}
        row["parameters"] = built[name].count_params()
        for runtime in RUNTIMES:
            row[f"{runtime} one"] = statistics.median(times[name, runtime]["one"])
            row[f"{runtime} batch"] = statistics.median(times[name, runtime]["batch"])
        results[name] = row
    return results


def report(results: dict[str, dict[str, float]], *, batch: int) -> None:
    base = next(iter(results.values()))
    print(
        f"{'variant':16s} {'runtime':9s} {'M MACs/img':>10s} {'params':>9s} {'ms/1 img':>9s}"
        f" {f'ms/{batch} img':>11s} {'us/img':>7s} {'x faster 1':>10s} {f'x faster {batch}':>12s}"
        f" {'x MACs':>7s} {'x time':>7s}"
    )
    for name, row in results.items():
        for runtime in RUNTIMES:
            one, many = row[f"{runtime} one"], row[f"{runtime} batch"]
            print(
                f"{name:16s} {runtime:9s} {row['macs'] / 1e6:10.2f} {row['parameters']:9,d}"
                f" {one:9.3f} {many:11.2f} {1000 * many / batch:7.0f}"
                f" {row['keras one'] / one:10.2f} {row['keras batch'] / many:12.2f}"
                f" {row['macs'] / base['macs']:7.2f} {many / base['keras batch']:7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", help="comma-separated names (default: train.variants)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--train",
        type=Path,
        default=Path("data/prepared/train.npz"),
        help="training images to calibrate int8 on (default: random images when it is absent)",
    )
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
    import onnxruntime

    print(
        f"tensorflow {tf.__version__}, onnxruntime {onnxruntime.__version__}; {args.threads}"
        f" thread(s); median CPU time of {args.repeats}\n"
    )
    variants = {name: params.train.models[name] for name in names}
    calibration = calibration_images(args.train)
    results = measure(
        variants,
        batch=args.batch,
        repeats=args.repeats,
        threads=args.threads,
        calibration=calibration,
    )
    report(results, batch=args.batch)


def calibration_images(path: Path, count: int = 500) -> np.ndarray:
    if path.is_file():
        with np.load(path) as data:
            return data["x"][:count]
    return np.random.default_rng(1).random((count, 28, 28), np.float32)


if __name__ == "__main__":
    main()
