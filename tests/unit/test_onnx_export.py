"""`pipeline.model.onnx_export`: the check of an export against Keras, int8 quantization and the
rule that decides which file is served."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline import config
from pipeline.model import int8, onnx_export

RULE = config.Int8Config()


def tiny(seed: int = 0):
    """A small Keras model with two named Dense layers over 28x28 inputs."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28), name="image"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(5, activation="softmax", name="head"),
        ],
        name="tiny",
    )


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 28, 28), dtype=np.float32)


def test_compare_finds_the_first_image_off_by_class_or_by_probability():
    expected = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5 + 1e-7]], np.float32)
    assert onnx_export.compare(expected, expected.copy()).exact
    nudged = expected.copy()
    nudged[1] += [2e-5, -2e-5]
    agreement = onnx_export.compare(expected, nudged)
    assert (agreement.first_bad, agreement.same_class) == (1, 3)
    assert agreement.max_difference == pytest.approx(2e-5, rel=1e-2)
    flipped = expected.copy()
    flipped[0] = [0.3, 0.7]
    assert onnx_export.compare(expected, flipped).same_class == 2


def probabilities_with_classes(classes: np.ndarray, count: int = 5) -> np.ndarray:
    return np.eye(count, dtype=np.float32)[classes] * 0.9 + 0.02


@pytest.mark.parametrize(
    ("int8_wrong", "int8_moved", "serve", "served", "why"),
    [
        # 1,000 images, fp32 right on 900: int8 losing one (0.1 point) is still within the rule.
        (1, 0, "auto", "int8", "int8 keeps the answers"),
        (2, 0, "auto", "fp32", "int8 does not keep the answers"),
        # The same accuracy, but 6 images (0.6%) change class: over the 0.5% allowed.
        (0, 6, "auto", "fp32", "int8 does not keep the answers"),
        (0, 0, "fp32", "fp32", "fp32 forced by evaluate.int8.serve"),
    ],
)
def test_the_int8_rule(int8_wrong, int8_moved, serve, served, why):
    labels = np.arange(1000) % 5
    fp32_classes = labels.copy()
    fp32_classes[:100] = (labels[:100] + 1) % 5  # 90.0% right
    int8_classes = fp32_classes.copy()
    int8_classes[100 : 100 + int8_wrong] = (labels[100 : 100 + int8_wrong] + 1) % 5
    # Images both get wrong, moved to another wrong class: the accuracy stays, the classes move.
    int8_classes[:int8_moved] = (labels[:int8_moved] + 2) % 5
    decision = int8.decide(
        config.Int8Config(serve=serve),
        labels=labels,
        fp32=probabilities_with_classes(fp32_classes),
        int8=probabilities_with_classes(int8_classes),
    )
    assert decision.served == served and decision.reason.startswith(why)
    assert decision.fp32_val_accuracy == pytest.approx(0.9)
    assert decision.agreement == pytest.approx(1 - (int8_wrong + int8_moved) / 1000)
    assert decision.served_file == f"model{'.int8' if served == 'int8' else ''}.onnx"
    tags = decision.as_tags()
    assert tags["onnx_served"] == served and tags["onnx_int8_decision"] == decision.reason


def test_int8_answers_must_be_probabilities_and_as_calibrated():
    """The same classes are not enough: int8 answers that do not sum to 1, or that are worse
    calibrated by more than `max_ece_increase` points, leave float32 served."""
    labels = np.arange(1000) % 5
    fp32 = probabilities_with_classes(labels)
    decide = int8.decide
    assert decide(RULE, labels=labels, fp32=fp32, int8=fp32.copy()).served == "int8"
    unnormalised = fp32 * np.float32(0.99)
    refused = decide(RULE, labels=labels, fp32=fp32, int8=unnormalised)
    assert refused.served == "fp32" and "sum to 1 within 0.01" in refused.reason
    assert refused.int8_max_sum_error == pytest.approx(0.01, abs=1e-6)
    # float32 right on 92% with 92% confidence (calibrated); int8 gives the same classes, each
    # 100% sure: 8 points of ECE more than allowed.
    classes = labels.copy()
    classes[:80] = (labels[:80] + 1) % 5
    calibrated = np.eye(5, dtype=np.float32)[classes] * 0.9 + 0.02
    overconfident = np.eye(5, dtype=np.float32)[classes]
    refused = decide(RULE, labels=labels, fp32=calibrated, int8=overconfident)
    assert refused.served == "fp32" and refused.agreement == 1.0
    assert refused.int8_ece - refused.fp32_ece == pytest.approx(0.08)
    tags = refused.as_tags()
    assert float(tags["onnx_fp32_val_ece"]) == pytest.approx(0.0, abs=1e-6)
    assert float(tags["onnx_int8_val_ece"]) == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"max_accuracy_drop": -0.1}, "evaluate.int8.max_accuracy_drop must be at least 0"),
        ({"min_agreement": 1.5}, "evaluate.int8.min_agreement must be in (0, 1]"),
        ({"calibration_images": 0}, "evaluate.int8.calibration_images must be at least 1"),
        ({"max_ece_increase": -1}, "evaluate.int8.max_ece_increase must be at least 0"),
        ({"serve": "int4"}, "evaluate.int8.serve: 'int4' is not one of ['auto', 'fp32']"),
        ({"threshold": 1}, "unknown key(s) ['evaluate.int8.threshold']"),
    ],
)
def test_the_int8_section_names_its_bad_key(tmp_path: Path, section, message):
    path = tmp_path / "params.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"evaluate": {"int8": section}}))
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(path)


def test_an_export_is_checked_against_keras_and_quantizes(tmp_path: Path):
    model = tiny()
    agreement = onnx_export.export_checked(model, tmp_path, images(200))
    assert agreement.exact and agreement.images == 200
    assert agreement.max_difference <= onnx_export.TOLERANCE
    int8_file = int8.quantize(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", images(50))
    quantized = onnx_export.onnx_probabilities(int8_file, images(200, seed=1))
    expected = np.asarray(model(images(200, seed=1)))
    # Quantized, so not equal; but close, and it is a real int8 file (QDQ nodes).
    assert np.abs(quantized - expected).max() < 0.1
    import onnx

    graph = onnx.load(str(int8_file)).graph
    assert "DequantizeLinear" in {node.op_type for node in graph.node}
    # The head and its softmax stay float: the answers are probabilities, not steps of 1/255.
    assert np.abs(quantized.sum(axis=1) - 1).max() <= int8.MAX_SUM_ERROR
    assert len(np.unique(quantized)) > 0.9 * quantized.size
    last = next(node for node in graph.node if graph.output[0].name in node.output)
    assert last.op_type == "Softmax"


def tampering(layer: str):
    """An exporter that exports faithfully, then scales the weights tf2onnx made from `layer`:
    an export that breaks at that layer and nowhere before."""

    def export(model, path: Path) -> Path:
        import onnx
        from onnx import numpy_helper

        onnx_export.export(model, path)
        graph = onnx.load(str(path))
        for index, tensor in enumerate(graph.graph.initializer):
            if re.search(rf"/{layer}(_\d+)?/", tensor.name):
                scaled = numpy_helper.to_array(tensor) * 1.5
                graph.graph.initializer[index].CopyFrom(
                    numpy_helper.from_array(scaled, tensor.name)
                )
        onnx.save(graph, str(path))
        return path

    return export


def test_a_diverging_export_fails_the_check_naming_its_first_broken_layer(tmp_path: Path):
    model = tiny()
    broken = tampering("hidden")
    path = broken(model, tmp_path / "model.onnx")
    with pytest.raises(onnx_export.ExportMismatch) as raised:
        onnx_export.check(model, path, images(64), exporter=broken)
    message = str(raised.value)
    assert "the ONNX export differs from Keras" in message
    assert "the first layer that diverges is 'hidden'" in message
    assert "MatMul" in message
