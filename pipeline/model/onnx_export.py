"""The served network as ONNX: export, the check against Keras, int8 quantization and its rule.

`evaluate` exports exactly the model it registers (`export`), checks the file against Keras on
the validation split (`check`: the same class for every image, every probability within
`TOLERANCE`; otherwise `ExportMismatch` names the first layer whose export diverges), quantizes
it statically on training images (`quantize`) and lets `evaluate.int8` decide which file is served
(`decide`). `serving.tools.package` runs the same `export_checked` for a version registered without
ONNX. Keras, tf2onnx and onnxruntime's quantizer are imported by the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

    from pipeline.config import Int8Config

log = logging.getLogger(__name__)
# The files a registered version carries (the served one is named in its tags).
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Largest difference between a Keras and an ONNX Runtime probability that passes the check.
TOLERANCE = 1e-5
BATCH = 1024
# Ops whose weights make a layer cost. The quantizer leaves the last of them and everything after
# it (the classifier head, the softmax) in float: the answers stay probabilities that sum to 1,
# not multiples of 1/255, for a cost that is small beside the layers before.
WEIGHTED = ("MatMul", "Gemm", "Conv")
# A served file's probabilities must sum to 1 within this on every validation image.
MAX_SUM_ERROR = 1e-5


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


class _Calibration:
    """onnxruntime's CalibrationDataReader over training images, one batch at a time."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 100) -> None:
        self._batches = iter(
            {input_name: np.asarray(images[start : start + batch], np.float32)}
            for start in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def head_nodes(path: Path) -> list[str]:
    """The names of the graph's nodes from its last weighted op (`WEIGHTED`) to the output.

    ONNX keeps nodes in topological order, so these are the head and what follows it."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    weighted = [index for index, node in enumerate(nodes) if node.op_type in WEIGHTED]
    start = weighted[-1] if weighted else len(nodes)
    return [node.name for node in nodes[start:]]


def quantize(fp32: Path, int8: Path, calibration_images: np.ndarray) -> Path:
    """Statically quantize `fp32` into `int8`: QDQ, per-channel int8 weights, uint8 activations
    whose ranges come from `calibration_images` (training images: never test ones). The head and
    the softmax stay float (`head_nodes`)."""
    from onnxruntime import quantization

    name = session(fp32).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference needs sympy; the shapes here are static but for the batch.
        # The quantizer logs a line per tensor it copies (on the root logger): only warnings.
        with quiet(""):
            quantization.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared),
                str(int8),
                _Calibration(name, calibration_images),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=head_nodes(prepared),
            )
    return int8


@dataclass(frozen=True)
class Int8Decision:
    """Whether the int8 file is served, and the validation figures the rule looked at."""

    served: str  # "int8" or "fp32"
    reason: str
    fp32_val_accuracy: float
    int8_val_accuracy: float
    # Fraction of validation images whose class int8 keeps.
    agreement: float
    # The largest distance from 1 of an int8 answer's sum, and both files' ECE, on validation.
    int8_max_sum_error: float
    fp32_ece: float
    int8_ece: float

    @property
    def served_file(self) -> str:
        return INT8_FILE if self.served == "int8" else FP32_FILE

    def as_tags(self) -> dict[str, str]:
        return {
            "onnx_served": self.served,
            "onnx_int8_decision": self.reason,
            "onnx_fp32_val_accuracy": f"{self.fp32_val_accuracy:.6f}",
            "onnx_int8_val_accuracy": f"{self.int8_val_accuracy:.6f}",
            "onnx_int8_agreement": f"{self.agreement:.6f}",
            "onnx_int8_max_sum_error": f"{self.int8_max_sum_error:.3g}",
            "onnx_fp32_val_ece": f"{self.fp32_ece:.6f}",
            "onnx_int8_val_ece": f"{self.int8_ece:.6f}",
        }


def decide(
    rule: Int8Config, *, labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray
) -> Int8Decision:
    """Apply `evaluate.int8` to the two files' validation probabilities: int8 is served when it
    keeps the classes (accuracy and agreement), its answers are probabilities (they sum to 1)
    and it is calibrated as well as float32 (ECE)."""
    from pipeline.model.calibration import expected_calibration_error

    fp32_classes, int8_classes = fp32.argmax(axis=1), int8.argmax(axis=1)
    figures = Int8Decision(
        served="fp32",
        reason="",
        fp32_val_accuracy=float((fp32_classes == labels).mean()),
        int8_val_accuracy=float((int8_classes == labels).mean()),
        agreement=float((fp32_classes == int8_classes).mean()),
        int8_max_sum_error=float(np.abs(int8.sum(axis=1, dtype=np.float64) - 1.0).max()),
        fp32_ece=expected_calibration_error(fp32, labels),
        int8_ece=expected_calibration_error(int8, labels),
    )
    said, kept = _judged(rule, figures)
    if rule.serve == "fp32":
        served, reason = "fp32", f"fp32 forced by evaluate.int8.serve; {said}"
    elif kept:
        served, reason = "int8", f"int8 keeps the answers: {said}"
    else:
        served, reason = "fp32", f"int8 does not keep the answers: {said}"
    return dataclasses.replace(figures, served=served, reason=reason)


def _judged(rule: Int8Config, figures: Int8Decision) -> tuple[str, bool]:
    """What the rule looked at, in words, and whether int8 passes it."""
    drop = 100.0 * (figures.fp32_val_accuracy - figures.int8_val_accuracy)
    ece_rise = 100.0 * (figures.int8_ece - figures.fp32_ece)
    said = (
        f"validation accuracy {100 * figures.fp32_val_accuracy:.2f}% ->"
        f" {100 * figures.int8_val_accuracy:.2f}% ({drop:+.2f} points lost, at most"
        f" {rule.max_accuracy_drop:g} allowed); the same class for {100 * figures.agreement:.2f}%"
        f" of images (at least {100 * rule.min_agreement:g}% needed); probabilities sum to 1"
        f" within {figures.int8_max_sum_error:.1g} (at most {MAX_SUM_ERROR:g} allowed); ECE"
        f" {100 * figures.fp32_ece:.2f}% -> {100 * figures.int8_ece:.2f}% ({ece_rise:+.2f}"
        f" points, at most {rule.max_ece_increase:g} allowed)"
    )
    kept = (
        drop <= rule.max_accuracy_drop + 1e-9
        and figures.agreement >= rule.min_agreement
        and figures.int8_max_sum_error <= MAX_SUM_ERROR
        and ece_rise <= rule.max_ece_increase + 1e-9
    )
    return said, kept


@dataclass(frozen=True)
class OnnxFiles:
    """The two files `build_files` wrote into `folder`, their check and the served one."""

    folder: Path
    check: Agreement
    decision: Int8Decision
    fp32_sha256: str
    int8_sha256: str
    # The served file's test accuracy (reported, never used to choose).
    served_test_accuracy: float

    def as_tags(self) -> dict[str, str]:
        """The registered version's tags about its ONNX files."""
        served = self.int8_sha256 if self.decision.served == "int8" else self.fp32_sha256
        return {
            "onnx_file": self.decision.served_file,
            "onnx_sha256": served,
            "onnx_fp32_sha256": self.fp32_sha256,
            "onnx_int8_sha256": self.int8_sha256,
            "onnx_check": f"{self.check.images} validation images, the same class for all,"
            f" probabilities within {self.check.max_difference:.2g} of Keras",
            "onnx_served_test_accuracy": f"{self.served_test_accuracy:.6f}",
        } | self.decision.as_tags()


def calibration_sample(train_images: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """`count` training images drawn without replacement (all of them when there are fewer)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train_images), size=min(count, len(train_images)), replace=False)
    return train_images[np.sort(chosen)]


def build_files(
    model: keras.Model,
    folder: Path,
    *,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    train_images: np.ndarray,
    rule: Int8Config,
) -> OnnxFiles:
    """Export `model` (checked on validation), quantize it on training images and apply `rule`."""
    folder = Path(folder)
    agreement = export_checked(model, folder, val[0])
    fp32, int8 = folder / FP32_FILE, folder / INT8_FILE
    quantize(fp32, int8, calibration_sample(train_images, rule.calibration_images))
    decision = decide(
        rule,
        labels=val[1],
        fp32=onnx_probabilities(fp32, val[0]),
        int8=onnx_probabilities(int8, val[0]),
    )
    log.info("ONNX: serving %s: %s", decision.served_file, decision.reason)
    served = onnx_probabilities(folder / decision.served_file, test[0])
    return OnnxFiles(
        folder=folder,
        check=agreement,
        decision=decision,
        fp32_sha256=sha256(fp32),
        int8_sha256=sha256(int8),
        served_test_accuracy=float((served.argmax(axis=1) == test[1]).mean()),
    )
