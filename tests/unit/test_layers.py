"""The fused training-time batch norm computes what Keras's stock layer does, on one kernel."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConvBlockConfig, ModelConfig
from pipeline.model import architectures
from pipeline.model.layers import FusedBatchNormalization


# mixed_float16 is what a GPU trains in; its kernel there is cuDNN's, here the CPU's.
@pytest.fixture(params=["float32", "mixed_bfloat16", "mixed_float16"])
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def twin_layers(shape: tuple[int, ...], **options) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """A stock and a fused batch norm with the same, non-trivial weights."""
    stock = keras.layers.BatchNormalization(momentum=0.9, **options)
    fused = FusedBatchNormalization(momentum=0.9, **options)
    for layer in (stock, fused):
        layer.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in stock.get_weights()]
    for layer in (stock, fused):
        layer.set_weights(weights)
    return stock, fused


def training_step(layer: keras.layers.Layer, x: tf.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """The layer's training-mode output and the gradients of a non-linear loss of it with respect
    to the input, gamma and beta."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, "float32") ** 3)
    gradients = tape.gradient(loss, [x, *layer.trainable_variables])
    return np.asarray(tf.cast(outputs, "float32")), [np.asarray(g) for g in gradients]


# (batch, 7, 7, channels) after a conv; (batch, units) after a dense layer, where one batch holds
# few values per unit and the kernel's unbiased variance would differ from Keras's by 16/15.
@pytest.mark.parametrize("shape", [(16, 7, 7, 5), (16, 6)], ids=["conv", "dense"])
def test_a_training_step_matches_keras_batch_norm(policy, shape):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32))
    stock, fused = twin_layers(shape)
    before = stock.get_weights()
    stock_out, stock_gradients = training_step(stock, x)
    fused_out, fused_gradients = training_step(fused, x)
    # bfloat16 keeps 8 bits of mantissa, float16 11: compare at their resolution there.
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-4} if policy == "float32" else {"rtol": 2e-2, "atol": 2e-2}
    )
    np.testing.assert_allclose(fused_out, stock_out, **tolerance)
    for fused_gradient, stock_gradient in zip(fused_gradients, stock_gradients, strict=True):
        scale = np.abs(stock_gradient).max()
        np.testing.assert_allclose(fused_gradient / scale, stock_gradient / scale, **tolerance)
    # The moving statistics move, and the same way (float32 variables under both policies).
    for moved, initial in zip(stock.get_weights()[2:], before[2:], strict=True):
        assert np.abs(moved - initial).min() > 0.01
    np.testing.assert_allclose(fused.moving_mean, stock.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, stock.moving_variance, rtol=1e-5)
    # Inference uses the moving statistics, through the stock layer's code.
    np.testing.assert_allclose(
        np.asarray(tf.cast(fused(x), "float32")),
        np.asarray(tf.cast(stock(x), "float32")),
        **tolerance,
    )


def kernels_traced(layer: keras.layers.Layer, shape: tuple[int, ...], training: bool) -> set[str]:
    call = tf.function(lambda x: layer(x, training=training))
    graph = call.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return {operation.type for operation in graph.get_operations()}


def test_training_runs_the_fused_kernel_and_inference_does_not():
    shape = (8, 5, 5, 3)
    _, fused = twin_layers(shape)
    assert any(kind.startswith("FusedBatchNorm") for kind in kernels_traced(fused, shape, True))
    assert not any(
        kind.startswith("FusedBatchNorm") for kind in kernels_traced(fused, shape, False)
    )


@pytest.mark.parametrize("options", [{"center": False}, {"scale": False}, {"axis": 1}])
def test_what_the_kernel_cannot_do_goes_through_the_stock_code(options):
    shape = (8, 5, 5, 3)
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    stock, fused = twin_layers(shape, **options)
    assert not any(kind.startswith("FusedBatchNorm") for kind in kernels_traced(fused, shape, True))
    np.testing.assert_allclose(training_step(fused, x)[0], training_step(stock, x)[0], rtol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(architecture="mlp", dense=(8, 4), batch_norm=True),
        ModelConfig(
            architecture="cnn",
            conv_blocks=(ConvBlockConfig(filters=4, convs=2),),
            dense=(8,),
            batch_norm=True,
        ),
    ],
    ids=["mlp", "cnn"],
)
def test_a_model_built_for_training_holds_the_stock_models_weights(config):
    """Only the batch-norm class differs, so weights copy across both ways, in order."""
    stock = architectures.build(config, num_classes=10)
    fused = architectures.build(config, num_classes=10, fused_batch_norm=True)
    batch_norms = [
        layer for layer in stock.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and not any(
        isinstance(layer, FusedBatchNormalization) for layer in batch_norms
    )
    assert [type(layer) for layer in fused.layers if "batch_normalization" in layer.name] == [
        FusedBatchNormalization
    ] * len(batch_norms)
    assert [w.shape for w in fused.get_weights()] == [w.shape for w in stock.get_weights()]
    fused.set_weights(stock.get_weights())
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(
        fused.predict(images, verbose=0), stock.predict(images, verbose=0)
    )
