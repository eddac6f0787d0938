"""The training loss for a sigmoid output layer, registered so that saved models load.

Keras 3 (TensorFlow backend) computes categorical cross-entropy on a sigmoid output from the
logits the sigmoid caches, as softmax cross-entropy: another loss than the one the seed
notebooks' Keras computed (divide the outputs by their sum, then cross-entropy), and one that
trains faster. `seed003_slp` trained under Keras 3's reading reached 79.4% where its source
printed 77.4%. Import this module before `keras.saving.load_model(..., compile=True)` of such a
model; `compile=False`, as serving and `evaluate` load, needs nothing.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="mnist_mlops")
class SumNormalisedCrossentropy(keras.losses.CategoricalCrossentropy):
    """Categorical cross-entropy of the outputs divided by their sum (clipped as Keras clips)."""

    def call(self, y_true, y_pred):
        # The division makes a new tensor without Keras's cached logits.
        return super().call(y_true, y_pred / keras.ops.sum(y_pred, axis=-1, keepdims=True))


def crossentropy(
    output_activation: str | None, *, label_smoothing: float = 0.0
) -> keras.losses.Loss:
    """Categorical cross-entropy for a model whose output layer has `output_activation`."""
    if output_activation == "softmax":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if output_activation == "sigmoid":
        return SumNormalisedCrossentropy(label_smoothing=label_smoothing)
    raise ValueError(
        "the model must end in a softmax or sigmoid Dense layer;"
        f" its output activation is {output_activation!r}"
    )
