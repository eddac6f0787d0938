"""Pure Keras model builders, parameterised by typed config; they build, they do not fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline import datasets
from pipeline.config import ModelConfig

if TYPE_CHECKING:
    import keras


def _dense_block(layers: list, units: int, config: ModelConfig) -> None:
    import keras

    layers.append(keras.layers.Dense(units, use_bias=not config.batch_norm))
    if config.batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Activation(config.activation))
    if config.dropout:
        layers.append(keras.layers.Dropout(config.dropout))


def _head(layers: list, num_classes: int) -> None:
    import keras

    # The softmax stays float32 under mixed precision, so probabilities sum to 1 accurately.
    layers.append(
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")
    )


def build_mlp(config: ModelConfig, *, num_classes: int) -> keras.Sequential:
    """An MLP on flattened 28x28 images: dense blocks (dense, batch norm, activation, dropout)."""
    import keras

    layers: list = [keras.Input(shape=datasets.IMAGE_SHAPE, name="image"), keras.layers.Flatten()]
    for units in config.dense:
        _dense_block(layers, units, config)
    _head(layers, num_classes)
    return keras.Sequential(layers, name="mlp")


def build_cnn(config: ModelConfig, *, num_classes: int) -> keras.Sequential:
    """A CNN: conv blocks (conv, batch norm, activation; pooling; dropout), then dense blocks."""
    import keras

    layers: list = [
        keras.Input(shape=datasets.IMAGE_SHAPE, name="image"),
        keras.layers.Reshape((*datasets.IMAGE_SHAPE, 1)),
    ]
    for block in config.conv_blocks:
        for _ in range(block.convs):
            layers.append(
                keras.layers.Conv2D(
                    block.filters, block.kernel_size, padding="same", use_bias=not config.batch_norm
                )
            )
            if config.batch_norm:
                layers.append(keras.layers.BatchNormalization())
            layers.append(keras.layers.Activation(config.activation))
        if block.pool:
            layers.append(keras.layers.MaxPooling2D())
        if block.dropout:
            layers.append(keras.layers.Dropout(block.dropout))
    layers.append(keras.layers.Flatten())
    for units in config.dense:
        _dense_block(layers, units, config)
    _head(layers, num_classes)
    return keras.Sequential(layers, name="cnn")


def build(config: ModelConfig, *, num_classes: int) -> keras.Sequential:
    """Build the architecture that `config` names."""
    builders = {"mlp": build_mlp, "cnn": build_cnn}
    return builders[config.architecture](config, num_classes=num_classes)
