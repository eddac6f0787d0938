"""Pure Keras model builders, parameterised by typed config; they build, they do not fit.

Every model ends in a dense layer named `probabilities` (softmax, or sigmoid for the seed notebooks
that use one); `pipeline.model.calibration` relies on that to read the scores before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import ModelConfig
from pipeline.data import datasets

if TYPE_CHECKING:
    import keras

HEAD = "probabilities"
# Keras's 0.99 averages the batch statistics over ~100 steps: with a few hundred steps in all
# (small data, few epochs) inference would run on half-learnt statistics and collapse to chance.
BATCH_NORM_MOMENTUM = 0.9


def _normalised_activation(
    layers: list, activation: str, config: ModelConfig, *, fused: bool
) -> None:
    """Batch norm (when configured) before the activation; `fused`: the training-time layer."""
    import keras

    if config.batch_norm:
        batch_norm = keras.layers.BatchNormalization
        if fused:
            from pipeline.model.layers import FusedBatchNormalization as batch_norm
        layers.append(batch_norm(momentum=BATCH_NORM_MOMENTUM))
    layers.append(keras.layers.Activation(activation))


def _dense_block(layers: list, units: int, config: ModelConfig, *, fused: bool) -> None:
    import keras

    layers.append(
        keras.layers.Dense(
            units, use_bias=not config.batch_norm, kernel_initializer=config.kernel_initializer
        )
    )
    _normalised_activation(layers, config.activation, config, fused=fused)
    if config.dropout:
        layers.append(keras.layers.Dropout(config.dropout))


def _conv_blocks(layers: list, config: ModelConfig, *, fused: bool) -> None:
    """Each block: `convs` times (conv, batch norm, activation); then pooling and dropout."""
    import keras

    for block in config.conv_blocks:
        for _ in range(block.convs):
            layers.append(
                keras.layers.Conv2D(
                    block.filters,
                    block.kernel_size,
                    padding=config.padding,
                    use_bias=not config.batch_norm,
                    kernel_initializer=config.kernel_initializer,
                )
            )
            _normalised_activation(layers, block.activation, config, fused=fused)
        if block.pool:
            layers.append(keras.layers.MaxPooling2D())
        if block.dropout:
            layers.append(keras.layers.Dropout(block.dropout))


def _head(layers: list, num_classes: int, config: ModelConfig) -> None:
    import keras

    if config.head_dropout:
        layers.append(keras.layers.Dropout(config.head_dropout))
    # The output stays float32 under mixed precision, so probabilities sum to 1 accurately.
    layers.append(
        keras.layers.Dense(
            num_classes,
            activation=config.output_activation,
            kernel_initializer=config.kernel_initializer,
            dtype="float32",
            name=HEAD,
        )
    )


def build_mlp(
    config: ModelConfig, *, num_classes: int, fused_batch_norm: bool = False
) -> keras.Sequential:
    """An MLP on flattened 28x28 images: dense blocks (dense, batch norm, activation, dropout)."""
    import keras

    layers: list = [keras.Input(shape=datasets.IMAGE_SHAPE, name="image"), keras.layers.Flatten()]
    for units in config.dense:
        _dense_block(layers, units, config, fused=fused_batch_norm)
    _head(layers, num_classes, config)
    return keras.Sequential(layers, name="mlp")


def build_cnn(
    config: ModelConfig, *, num_classes: int, fused_batch_norm: bool = False
) -> keras.Sequential:
    """A CNN: conv blocks (conv, batch norm, activation; pooling; dropout), then dense blocks."""
    import keras

    layers: list = [
        keras.Input(shape=datasets.IMAGE_SHAPE, name="image"),
        keras.layers.Reshape((*datasets.IMAGE_SHAPE, 1)),
    ]
    _conv_blocks(layers, config, fused=fused_batch_norm)
    layers.append(keras.layers.Flatten())
    for units in config.dense:
        _dense_block(layers, units, config, fused=fused_batch_norm)
    _head(layers, num_classes, config)
    return keras.Sequential(layers, name="cnn")


def output_layer(model: keras.Model) -> tuple[keras.layers.Dense | None, str | None]:
    """`model`'s last layer when it is a Dense layer, and its activation's name (else None, None).

    Training picks its loss by that activation (`pipeline.model.losses`); calibration reads the
    scores before it."""
    import keras

    last = model.layers[-1] if model.layers else None
    if not isinstance(last, keras.layers.Dense):
        return None, None
    return last, last.activation.__name__


def mirror_averaged(model: keras.Sequential) -> keras.Model:
    """`model` answering for each image and its mirror image together (test-time augmentation):
    its output activation applied to the mean of the two images' pre-activation scores.

    Standard layers only, so the saved model loads without custom objects: a fixed dense layer
    (`mirror`, an anti-diagonal kernel on the image rows) reverses each row; `model`'s layers
    but the last compute features for both images (shared: a further `fit` trains them); a
    linear copy of its output layer (`scores`) scores both; the mean goes through a fixed
    identity layer with `model`'s output activation, named `probabilities` like every model's
    output layer.
    """
    import keras
    import numpy as np

    head, activation = output_layer(model)
    if head is None:
        raise ValueError(f"model {model.name!r} must end in a Dense layer to be mirror-averaged")
    width = model.input_shape[-1]
    image = keras.Input(shape=model.input_shape[1:], name="image")
    body = keras.Sequential(
        [keras.Input(shape=model.input_shape[1:]), *model.layers[:-1]], name="features"
    )
    mirror = fixed_dense(np.eye(width)[::-1], activation=None, name="mirror", bias=False)
    scores = dense_copy(head, activation=None, name="scores")
    mean = keras.layers.Average(dtype="float32")([scores(body(image)), scores(body(mirror(image)))])
    output = fixed_dense(np.eye(head.units), activation=activation, name=HEAD)
    return keras.Model(image, output(mean), name=model.name)


def dense_copy(layer, *, activation: str | None, name: str):
    """A float32 copy of the Dense `layer` (its weights, not shared) with another activation."""
    import keras

    copy = keras.layers.Dense(layer.units, activation=activation, dtype="float32", name=name)
    copy.build(layer.kernel.shape[:1])
    copy.set_weights(layer.get_weights())
    return copy


def fixed_dense(kernel, *, activation: str | None, name: str, bias: bool = True):
    """A float32 Dense layer with this `kernel` (and a zero bias) that training leaves alone:
    mirroring, averaging and calibration in standard layers."""
    import keras
    import numpy as np

    layer = keras.layers.Dense(
        kernel.shape[1],
        activation=activation,
        use_bias=bias,
        trainable=False,
        dtype="float32",
        name=name,
    )
    layer.build((kernel.shape[0],))
    weights = [kernel.astype(np.float32)] + (
        [np.zeros(kernel.shape[1], np.float32)] if bias else []
    )
    layer.set_weights(weights)
    return layer


def build(
    config: ModelConfig, *, num_classes: int, fused_batch_norm: bool = False
) -> keras.Sequential:
    """Build the architecture that `config` names. `fused_batch_norm`: for training only, batch
    norm as `pipeline.model.layers.FusedBatchNormalization` (the same weights, faster steps)."""
    builders = {"mlp": build_mlp, "cnn": build_cnn}
    return builders[config.architecture](
        config, num_classes=num_classes, fused_batch_norm=fused_batch_norm
    )
