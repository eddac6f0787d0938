"""bench/forward_ceiling.py: multiply-adds counted from an ONNX graph, and the ceiling they set."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import forward_ceiling

# A 3x3 convolution, 1 -> 2 channels, padded, on 5x5: 2 * 1 * 9 multiply-adds per output pixel
# of 25; then a (50 -> 4) product: 200.
CONV_MACS = 2 * 1 * 3 * 3 * 5 * 5
DENSE_MACS = 50 * 4


def _model(path, *, quantized: bool) -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(50, 4)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.array([-1, 50], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["conv", "flat"], ["rows"]),
    ]
    if quantized:
        initializers += [
            numpy_helper.from_array(np.clip(dense * 20, -127, 127).astype(np.int8), "dense_q"),
            numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["dense_q", "scale", "zero"], ["dense"]))
    else:
        initializers.append(numpy_helper.from_array(dense, "dense"))
    nodes.append(helper.make_node("MatMul", ["rows", "dense"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("quantized", [False, True])
def test_multiply_adds_of_convolutions_and_products(tmp_path, quantized):
    path = tmp_path / "tiny.onnx"
    _model(path, quantized=quantized)
    assert forward_ceiling.multiply_adds(path) == CONV_MACS + DENSE_MACS


def test_a_product_counts_every_row_of_one_image(tmp_path):
    # (n, 28, 28) @ (28, 28): 28 rows of 784 multiply-adds per image, as the mirror layer does.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 28, 28])],
        [numpy_helper.from_array(np.eye(28, dtype=np.float32), "w")],
    )
    path = tmp_path / "rows.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    assert forward_ceiling.multiply_adds(path) == 28 * 28 * 28


def test_measured_ceiling_of_a_real_session(tmp_path):
    path = tmp_path / "tiny.onnx"
    _model(path, quantized=False)
    ceiling = forward_ceiling.measure(path, np.zeros((64, 1, 5, 5)), repeats=3)
    assert ceiling.multiply_adds == CONV_MACS + DENSE_MACS
    assert ceiling.batch == 64
    assert ceiling.ms_per_image >= 0
    if ceiling.ms_per_image:
        assert ceiling.images_per_s == pytest.approx(ceiling.cores * 1000 / ceiling.ms_per_image)
    assert f"{ceiling.cores} cores" in ceiling.text()


def test_ceiling_arithmetic():
    ceiling = forward_ceiling.Ceiling(
        multiply_adds=25_000_000, batch=256, ms_per_image=0.5, cores=2
    )
    assert ceiling.images_per_s == pytest.approx(4000)
    assert ceiling.gflops == pytest.approx(100)
    assert "at most 4,000 images/s" in ceiling.text()
