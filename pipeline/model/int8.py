"""The int8 file beside the float32 export, and which of the two is served.

`build_files` exports the model (`pipeline.model.onnx_export`, checked against Keras), quantizes
the export statically on training images (`quantize`: the head and softmax stay float, so the
answers are probabilities) and lets `evaluate.int8` decide which file is served (`decide`: the
classes kept, probabilities that sum to 1, calibration as good). onnxruntime's quantizer is
imported by the function that needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.model import onnx_export

if TYPE_CHECKING:
    import keras

    from pipeline.config import Int8Config

log = logging.getLogger(__name__)
# Ops whose weights make a layer cost. The quantizer leaves the last of them and everything after
# it (the classifier head, the softmax) in float: the answers stay probabilities that sum to 1,
# not multiples of 1/255, for a cost that is small beside the layers before.
WEIGHTED = ("MatMul", "Gemm", "Conv")
# A served file's probabilities must sum to 1 within this on every validation image.
MAX_SUM_ERROR = 1e-5


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

    name = onnx_export.session(fp32).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference needs sympy; the shapes here are static but for the batch.
        # The quantizer logs a line per tensor it copies (on the root logger): only warnings.
        with onnx_export.quiet(""):
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
        return onnx_export.INT8_FILE if self.served == "int8" else onnx_export.FP32_FILE

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
    """The two files `build_files` wrote into `folder` (and the served one's probe), their check
    and the served one."""

    folder: Path
    check: onnx_export.Agreement
    decision: Int8Decision
    fp32_sha256: str
    int8_sha256: str
    # The probe (onnx_export.write_probe): validation images and the served file's answers.
    probe_sha256: str
    # What serving it costs here (onnx_export.served_costs): latency_ms, file_mib, session_mib.
    costs: dict[str, float | None]
    # The served file's test accuracy (reported, never used to choose).
    served_test_accuracy: float

    def as_tags(self) -> dict[str, str]:
        """The registered version's tags about its ONNX files."""
        served = self.int8_sha256 if self.decision.served == "int8" else self.fp32_sha256
        return (
            {
                "onnx_file": self.decision.served_file,
                "onnx_sha256": served,
                "onnx_fp32_sha256": self.fp32_sha256,
                "onnx_int8_sha256": self.int8_sha256,
                "onnx_probe_sha256": self.probe_sha256,
                "onnx_check": f"{self.check.images} validation images, the same class for all,"
                f" probabilities within {self.check.max_difference:.2g} of Keras",
                "onnx_served_test_accuracy": f"{self.served_test_accuracy:.6f}",
            }
            | self.decision.as_tags()
            | {
                f"served_{key}": f"{value:.4g}"
                for key, value in self.costs.items()
                if value is not None
            }
        )


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
    agreement = onnx_export.export_checked(model, folder, val[0])
    fp32, int8 = folder / onnx_export.FP32_FILE, folder / onnx_export.INT8_FILE
    quantize(fp32, int8, calibration_sample(train_images, rule.calibration_images))
    decision = decide(
        rule,
        labels=val[1],
        fp32=onnx_export.onnx_probabilities(fp32, val[0]),
        int8=onnx_export.onnx_probabilities(int8, val[0]),
    )
    log.info("ONNX: serving %s: %s", decision.served_file, decision.reason)
    served = onnx_export.onnx_probabilities(folder / decision.served_file, test[0])
    probe = onnx_export.write_probe(
        folder / decision.served_file, val[0], int8=decision.served == "int8"
    )
    costs = onnx_export.served_costs(folder / decision.served_file, val[0][0])
    return OnnxFiles(
        folder=folder,
        check=agreement,
        decision=decision,
        fp32_sha256=onnx_export.sha256(fp32),
        int8_sha256=onnx_export.sha256(int8),
        probe_sha256=onnx_export.sha256(probe),
        costs=costs,
        served_test_accuracy=float((served.argmax(axis=1) == test[1]).mean()),
    )
