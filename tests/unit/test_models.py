"""Keras builders: shapes, exact parameter counts, configured layers and dtypes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline import models
from pipeline.config import ConvBlockConfig, ModelConfig

MLP = ModelConfig(architecture="mlp", dense=(8,))
CNN = ModelConfig(architecture="cnn", conv_blocks=(ConvBlockConfig(filters=4),))


def layers_of(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.mark.parametrize("config", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_maps_images_to_class_probabilities(config, num_classes):
    model = models.build(config, num_classes=num_classes)
    assert model.name == config.architecture
    assert model.input_shape == (None, 28, 28)
    images = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    probabilities = np.asarray(model(images))
    assert probabilities.shape == (5, num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# Expected counts by hand. Dense: inputs * units + units (bias); conv: k*k*in*filters + filters.
# With batch norm, dense/conv layers drop their bias and batch norm adds 4 per unit/filter
# (gamma, beta, moving mean, moving variance).
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(MLP, (784 * 8 + 8) + (8 * 10 + 10), id="mlp-8"),
        pytest.param(
            ModelConfig(architecture="mlp", dense=(16, 8), batch_norm=True, dropout=0.5),
            (784 * 16 + 4 * 16) + (16 * 8 + 4 * 8) + (8 * 10 + 10),
            id="mlp-16-8-batch-norm",
        ),
        # 28x28x1 -> conv 4 filters -> pool 14x14x4 = 784 features -> softmax head.
        pytest.param(CNN, (3 * 3 * 1 * 4 + 4) + (14 * 14 * 4 * 10 + 10), id="cnn-4"),
        pytest.param(
            ModelConfig(
                architecture="cnn",
                conv_blocks=(
                    ConvBlockConfig(filters=4, convs=2, pool=True, dropout=0.1),
                    ConvBlockConfig(filters=8, kernel_size=5, pool=False),
                ),
                dense=(16,),
                batch_norm=True,
            ),
            (3 * 3 * 1 * 4 + 4 * 4)  # block 1, first conv
            + (3 * 3 * 4 * 4 + 4 * 4)  # block 1, second conv; then pool to 14x14
            + (5 * 5 * 4 * 8 + 4 * 8)  # block 2, no pool: 14x14x8 = 1568 features
            + (1568 * 16 + 4 * 16)
            + (16 * 10 + 10),
            id="cnn-two-blocks-batch-norm",
        ),
    ],
)
def test_parameter_count(config, expected):
    assert models.build(config, num_classes=10).count_params() == expected


@pytest.mark.parametrize(
    ("config", "batch_norms", "dropout_rates"),
    [
        (ModelConfig(architecture="mlp", dense=(16, 8)), 0, []),
        (
            ModelConfig(architecture="mlp", dense=(16, 8), batch_norm=True, dropout=0.25),
            2,
            [0.25, 0.25],
        ),
        (
            ModelConfig(
                architecture="cnn",
                conv_blocks=(
                    ConvBlockConfig(filters=4, convs=2, dropout=0.1),
                    ConvBlockConfig(filters=8),
                ),
                dense=(16,),
                batch_norm=True,
                dropout=0.4,
            ),
            3 + 1,
            [0.1, 0.4],
        ),
    ],
    ids=["mlp-plain", "mlp-batch-norm-dropout", "cnn-batch-norm-dropout"],
)
def test_batch_norm_and_dropout_layers_follow_config(config, batch_norms, dropout_rates):
    model = models.build(config, num_classes=10)
    assert len(layers_of(model, keras.layers.BatchNormalization)) == batch_norms
    assert [layer.rate for layer in layers_of(model, keras.layers.Dropout)] == dropout_rates
    hidden = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
        and layer.name != "probabilities"
    ]
    # Batch norm's beta makes a bias redundant.
    assert [layer.use_bias for layer in hidden] == [not config.batch_norm] * len(hidden)
    pools = layers_of(model, keras.layers.MaxPooling2D)
    assert len(pools) == sum(block.pool for block in config.conv_blocks)


def test_softmax_head_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build(CNN, num_classes=10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model(np.zeros((2, 28, 28), np.float32)).dtype == "float32"
