"""Keras builders: shapes, exact parameter counts, configured layers and dtypes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import config
from pipeline.config import ConvBlockConfig, ModelConfig
from pipeline.model import architectures

MLP = ModelConfig(architecture="mlp", dense=(8,))
CNN = ModelConfig(architecture="cnn", conv_blocks=(ConvBlockConfig(filters=4),))


def layers_of(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.mark.parametrize("config", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_maps_images_to_class_probabilities(config, num_classes):
    model = architectures.build(config, num_classes=num_classes)
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
    assert architectures.build(config, num_classes=10).count_params() == expected


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
    model = architectures.build(config, num_classes=10)
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
        model = architectures.build(CNN, num_classes=10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model(np.zeros((2, 28, 28), np.float32)).dtype == "float32"


# The seed notebooks' networks, counted by hand as their printed summaries count them.
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # Valid 3x3 convs: 28 -> 26 -> 24, pool 12 -> 10 -> 8, pool 4: 4*4*64 = 1024 features.
        pytest.param(
            ModelConfig(
                architecture="cnn",
                conv_blocks=(ConvBlockConfig(filters=32, convs=2), ConvBlockConfig(64, convs=2)),
                padding="valid",
                dense=(1024, 1024),
                activation="sigmoid",
                dropout=0.2,
            ),
            320 + 9_248 + 18_496 + 36_928 + 1_049_600 + 1_049_600 + 10_250,
            id="seed001-cnn-valid",
        ),
        # Same padding, 2x2 kernel: 28x28x64, pool 14x14x64 = 12,544 features.
        pytest.param(
            ModelConfig(architecture="cnn", conv_blocks=(ConvBlockConfig(64, kernel_size=2),)),
            320 + 125_450,
            id="seed003-cnn-same",
        ),
    ],
)
def test_seed_network_parameter_counts(config, expected):
    assert architectures.build(config, num_classes=10).count_params() == expected


def test_sigmoid_output_scores_each_class_on_its_own():
    config = ModelConfig(
        architecture="mlp", dense=(10,), activation="sigmoid", output_activation="sigmoid"
    )
    model = architectures.build(config, num_classes=10)
    scores = np.asarray(model(np.random.default_rng(0).random((64, 28, 28), dtype=np.float32)))
    assert ((scores > 0) & (scores < 1)).all()
    # Independent sigmoids do not sum to one: pipeline.model.losses and `evaluate` normalise them.
    assert np.abs(scores.sum(axis=1) - 1).max() > 0.5
    assert model.get_layer(architectures.HEAD).activation.__name__ == "sigmoid"


def test_kernel_initializer_reaches_every_weight_layer():
    config = ModelConfig(
        architecture="cnn",
        conv_blocks=(ConvBlockConfig(filters=8),),
        dense=(512,),
        kernel_initializer="random_normal",
    )
    model = architectures.build(config, num_classes=10)
    kernels = [
        layer.kernel.numpy()
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
    ]
    assert len(kernels) == 3
    # Keras's random_normal (Keras 1's `init='normal'`): mean 0, standard deviation 0.05,
    # whatever the fan-in; glorot_uniform's would be sqrt(2 / (1568 + 512)) = 0.031 here.
    assert abs(kernels[1].std() - 0.05) < 0.002
    assert abs(kernels[1].mean()) < 0.002
    # Keras's default, glorot_uniform: standard deviation sqrt(2 / (fan_in + fan_out)).
    default = architectures.build(
        dataclasses.replace(config, kernel_initializer="glorot_uniform"), num_classes=10
    )
    head = default.get_layer(architectures.HEAD).kernel.numpy()
    assert abs(head.std() - np.sqrt(2 / (512 + 10))) < 0.003


def test_head_dropout_only_before_the_output():
    config = ModelConfig(architecture="mlp", dense=(16, 16, 16), head_dropout=0.2)
    model = architectures.build(config, num_classes=10)
    dropouts = layers_of(model, keras.layers.Dropout)
    assert [layer.rate for layer in dropouts] == [0.2]
    assert model.layers[-2] is dropouts[0] and model.layers[-1].name == architectures.HEAD


def test_conv_blocks_have_their_own_activation():
    config = ModelConfig(
        architecture="cnn",
        conv_blocks=(ConvBlockConfig(filters=4), ConvBlockConfig(filters=4, activation="tanh")),
        dense=(8,),
        activation="sigmoid",
    )
    model = architectures.build(config, num_classes=10)
    names = [layer.activation.__name__ for layer in layers_of(model, keras.layers.Activation)]
    assert names == ["relu", "tanh", "sigmoid"]


def test_batch_norm_inference_matches_training_after_few_steps():
    """A batch-norm model fitted for a few dozen steps (small data, few epochs) must answer in
    inference mode as it does with the data's own batch statistics: its moving statistics have
    caught up (with Keras's default momentum, 0.99, they are still two-thirds the initial ones
    after 40 steps, and the probabilities differ by 0.77 on average)."""
    from tests.support.synthetic import make_split

    images, labels = make_split(640, seed=3)
    x = images.astype(np.float32) / 255
    y = np.eye(10, dtype=np.float32)[labels]
    keras.utils.set_random_seed(0)
    config = ModelConfig(
        architecture="cnn", conv_blocks=(ConvBlockConfig(filters=8),), dense=(32,), batch_norm=True
    )
    model = architectures.build(config, num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)  # 40 steps
    batch_statistics = np.asarray(model(x, training=True))
    moving_statistics = np.asarray(model(x, training=False))
    assert np.abs(batch_statistics - moving_statistics).sum(axis=1).mean() < 0.2
    assert (moving_statistics.argmax(axis=1) == labels).mean() > 0.9


# Parameter counts as the sources' printed model summaries give them (seed 000 and seed 003's
# dense networks print none: counted by hand, inputs * units + units per layer).
SEED_PARAMETERS = {
    "seed000_mlp": (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10),
    "seed001_mlp": 615_440 + 628_000 + 8_010,
    "seed001_cnn": 320 + 9_248 + 18_496 + 36_928 + 1_049_600 + 1_049_600 + 10_250,
    "seed003_slp": (784 * 10 + 10) + (10 * 10 + 10),
    "seed003_mlp50": (784 * 50 + 50) + (50 * 10 + 10),
    "seed003_mlp50x2": (784 * 50 + 50) + (50 * 50 + 50) + (50 * 10 + 10),
    "seed003_cnn": 125_770,
    "seed004_mlp": 623_290,
    "seed004_mlp2": 1_238_730,
    "seed004_mlp3": 1_854_170,
    "seed004_mlp_dropout": 1_854_170,
    "seed004_mlp_sgd": 1_854_170,
}


@pytest.mark.parametrize("variant", sorted(SEED_PARAMETERS))
def test_repository_seed_variants_have_their_sources_parameters(variant):
    params = config.load(Path(__file__).resolve().parents[2] / "params.yaml")
    model = architectures.build(params.train.models[variant].model, num_classes=10)
    assert model.count_params() == SEED_PARAMETERS[variant]


def test_every_seed_variant_in_params_is_checked():
    params = config.load(Path(__file__).resolve().parents[2] / "params.yaml")
    assert {name for name in params.train.models if name.startswith("seed")} == set(SEED_PARAMETERS)


@pytest.mark.parametrize("base", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("output_activation", ["softmax", "sigmoid"])
def test_mirror_averaged_model_answers_for_the_image_and_its_mirror(
    tmp_path, output_activation, base
):
    """Test-time mirroring: the output activation of the mean of the two images' scores, the
    same answer for an image and its mirror, in standard layers that load without this package."""
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(base, dense=(8,), output_activation=output_activation)
    model = architectures.build(config, num_classes=3)
    images = np.random.default_rng(1).random((6, 28, 28), dtype=np.float32)
    mirrored = images[:, :, ::-1]
    features = keras.Model(model.inputs[0], model.layers[-2].output)
    kernel, bias = model.layers[-1].get_weights()

    def scores(x):
        return np.asarray(features(x)) @ kernel + bias

    mean = (scores(images) + scores(mirrored)) / 2
    activation = keras.activations.get(output_activation)
    averaged = architectures.mirror_averaged(model)
    answers = np.asarray(averaged(images))
    np.testing.assert_allclose(answers, np.asarray(activation(mean)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(averaged(mirrored)), answers, atol=1e-6)
    assert np.abs(np.asarray(model(images)) - np.asarray(model(mirrored))).max() > 1e-3
    assert averaged.layers[-1].name == architectures.HEAD and averaged.name == model.name
    assert architectures.output_layer(averaged)[1] == output_activation
    # What training may go on with: the same trainable weights, in the same order.
    assert [v.shape for v in averaged.trainable_variables] == [
        v.shape for v in model.trainable_variables
    ]
    path = tmp_path / "mirrored.keras"
    averaged.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(images)), answers, atol=1e-6)
