"""The served network as ONNX: the export and its check against Keras.

`evaluate` exports exactly the model it registers (`export`), checks the file against Keras on
the validation split (`check`: the same class for every image, every probability within
`TOLERANCE`; otherwise `ExportMismatch` names the first layer whose export diverges).
`pipeline.model.int8` quantizes it and decides which file is served. `serving.tools.package` runs
the same `export_checked` for a version registered without ONNX. Keras, tf2onnx and onnxruntime
are imported by the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras


log = logging.getLogger(__name__)
# The files a registered version carries (the served one is named in its tags).
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Largest difference between a Keras and an ONNX Runtime probability that passes the check.
TOLERANCE = 1e-5
BATCH = 1024
# The probe: a few validation images and the served file's answers to them, registered with the
# version; a service that follows the registry serves a candidate only if it answers the same
# (serving.follow). Within PROBE_TOLERANCE for a float32 file; an int8 file's kernels differ
# more between CPUs (with and without VNNI), so it gets PROBE_TOLERANCE_INT8.
PROBE_FILE = "probe.npz"
PROBE_IMAGES = 16
PROBE_TOLERANCE = 1e-4
PROBE_TOLERANCE_INT8 = 1e-2


class ExportMismatch(RuntimeError):
    """The ONNX file does not answer as the Keras model does."""


@dataclass(frozen=True)
class Agreement:
    """How far one model's answers are from another's on the same images."""

    images: int
    same_class: int
    max_difference: float
    # The first image whose class or probabilities differ beyond the tolerance, if any.
    first_bad: int | None

    @property
    def exact(self) -> bool:
        return self.first_bad is None


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """`logger` ("" = the root logger) at WARNING for the duration."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.WARNING)
    try:
        yield
    finally:
        target.setLevel(level)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export(model: keras.Model, path: Path) -> Path:
    """Write `model` as ONNX to `path` with Keras's own exporter (tf2onnx underneath); the
    batch dimension stays free. The model is called once first, as the exporter requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # tf2onnx prints its progress to stdout and logs it at INFO, and Keras warns about the
    # input's name on the call: only errors are worth showing.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        quiet("tf2onnx"),
    ):
        warnings.simplefilter("ignore")
        model(np.zeros((1, *model.input_shape[1:]), np.float32))
        model.export(str(path), format="onnx", verbose=False)
    return path


def session(path: Path, *, threads: int = 0):
    """A CPU InferenceSession on `path` (`threads` 0: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(path_or_session: Any, images: np.ndarray) -> np.ndarray:
    """The ONNX model's outputs for float32 images, in batches of `BATCH`."""
    runner = (
        session(path_or_session) if isinstance(path_or_session, str | Path) else path_or_session
    )
    name = runner.get_inputs()[0].name
    images = np.asarray(images, dtype=np.float32)
    return np.concatenate(
        [
            runner.run(None, {name: images[start : start + BATCH]})[0]
            for start in range(0, len(images), BATCH)
        ]
    )


def write_probe(served: Path, images: np.ndarray, *, int8: bool) -> Path:
    """The probe of the served file `served`, beside it: the first PROBE_IMAGES of `images`, the
    file's probabilities for them and the tolerance a candidate must answer within."""
    images = np.asarray(images[:PROBE_IMAGES], dtype=np.float32)
    path = Path(served).parent / PROBE_FILE
    np.savez(
        path,
        images=images,
        probabilities=onnx_probabilities(served, images),
        tolerance=np.float32(PROBE_TOLERANCE_INT8 if int8 else PROBE_TOLERANCE),
    )
    return path


def served_costs(path: Path, image: np.ndarray, *, repeats: int = 200) -> dict[str, float | None]:
    """What serving `path` costs on this machine (the promotion gate's budget, `evaluate.budget`):
    `latency_ms`, the median time of one image on one ONNX Runtime thread after a warm-up;
    `file_mib`; `session_mib`, what opening the session and a first answer add to this process's
    resident memory (None where /proc cannot tell)."""
    before = _resident_mib()
    runner = session(path, threads=1)
    name = runner.get_inputs()[0].name
    single = np.asarray(image, np.float32)[None]
    for _ in range(20):
        runner.run(None, {name: single})
    after = _resident_mib()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.run(None, {name: single})
        times.append(time.perf_counter() - started)
    return {
        "latency_ms": float(np.median(times) * 1000),
        "file_mib": Path(path).stat().st_size / 2**20,
        "session_mib": None if before is None or after is None else max(after - before, 0.0),
    }


def _resident_mib() -> float | None:
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def keras_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(np.asarray(images, np.float32), batch_size=BATCH, verbose=0))


def compare(expected: np.ndarray, found: np.ndarray, *, tolerance: float = TOLERANCE) -> Agreement:
    """How `found` (N, classes) probabilities agree with `expected`'s."""
    if expected.shape != found.shape:
        raise ExportMismatch(f"outputs of shape {found.shape}, expected {expected.shape}")
    same = expected.argmax(axis=1) == found.argmax(axis=1)
    difference = np.abs(expected.astype(np.float64) - found.astype(np.float64)).max(axis=1)
    bad = np.flatnonzero(~same | (difference > tolerance))
    return Agreement(
        images=len(expected),
        same_class=int(same.sum()),
        max_difference=float(difference.max(initial=0.0)),
        first_bad=int(bad[0]) if len(bad) else None,
    )


def check(
    model: keras.Model,
    path: Path,
    images: np.ndarray,
    *,
    exporter: Callable[[Any, Path], Path] = export,
) -> Agreement:
    """Compare the ONNX file at `path` with `model` on `images`; ExportMismatch, naming the first
    layer whose export diverges, unless every class matches and every probability is within
    `TOLERANCE`."""
    agreement = compare(keras_probabilities(model, images), onnx_probabilities(path, images))
    if agreement.exact:
        return agreement
    culprit = diverging_layer(model, images[: min(len(images), 256)], exporter=exporter)
    raise ExportMismatch(
        f"the ONNX export differs from Keras on {agreement.images - agreement.same_class} of"
        f" {agreement.images} classes, largest probability difference"
        f" {agreement.max_difference:.3g} (tolerance {TOLERANCE:g}; first at image"
        f" {agreement.first_bad}); {culprit}"
    )


def prefixes(model: keras.Model) -> list[tuple[str, Any]]:
    """(layer name, the sub-model from the input up to that layer's output), in order. A layer
    applied more than once (a shared one) has no single output and is left out."""
    import keras

    found = []
    for layer in model.layers:
        with contextlib.suppress(AttributeError, ValueError):
            output = layer.output
            if not isinstance(output, list | tuple) and output is not model.inputs[0]:
                found.append((layer.name, keras.Model(model.inputs, output)))
    return found


def diverging_layer(
    model: keras.Model, images: np.ndarray, *, exporter: Callable[[Any, Path], Path] = export
) -> str:
    """Which layer breaks the export: each prefix of the model is exported and compared in turn
    (on any difference beyond `TOLERANCE`, since an inner layer's output is no probability)."""
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, prefix) in enumerate(prefixes(model)):
            path = exporter(prefix, Path(scratch) / f"prefix{index}.onnx")
            expected = keras_probabilities(prefix, images).reshape(len(images), -1)
            found = onnx_probabilities(path, images).reshape(len(images), -1)
            if expected.shape != found.shape:
                return f"layer {name!r} exports with output shape {found.shape[1:]}"
            difference = float(np.abs(expected - found).max(initial=0.0))
            if difference > TOLERANCE:
                ops = layer_ops(path, name)
                return (
                    f"the first layer that diverges is {name!r} (output differs by"
                    f" {difference:.3g}; its ONNX ops: {', '.join(ops) or 'none found'})"
                )
    return "every layer's prefix exports within tolerance: the difference is in the whole graph"


def layer_ops(path: Path, layer: str) -> list[str]:
    """The ONNX op types tf2onnx made from `layer` (its node names carry the layer's name)."""
    import onnx

    # tf2onnx names nodes model/layer_N/op: the layer's name with a call counter.
    pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")
    nodes = onnx.load(str(path)).graph.node
    return sorted({node.op_type for node in nodes if pattern.search(node.name)})


def export_checked(model: keras.Model, folder: Path, val_images: np.ndarray) -> Agreement:
    """Export `model` to `folder`/FP32_FILE and check it on the validation images."""
    path = export(model, Path(folder) / FP32_FILE)
    agreement = check(model, path, val_images)
    log.info(
        "exported %s (%d bytes): the same class on all %d validation images, probabilities"
        " within %.2g of Keras",
        path,
        path.stat().st_size,
        agreement.images,
        agreement.max_difference,
    )
    return agreement
