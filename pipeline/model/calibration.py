"""Temperature scaling: calibrated probabilities from a trained classifier, and how to check them.

A classifier's probabilities are calibrated when, among the images it gives 90%, it is right 90%
of the time. Label smoothing makes a model under-confident, long training over-confident. One
number fixes most of either (Guo et al., 2017, "On calibration of modern neural networks"):
divide the log-probabilities by a temperature T fitted on the validation split, then softmax
again; T > 1 softens over-confident answers, T < 1 sharpens under-confident ones, and the
predicted class never changes.

`evaluate` fits T (`fit_temperature`), reports the expected calibration error on test before and
after (`expected_calibration_error`), gives a reliability diagram's data (`reliability_curves`) and
registers `calibrated_model(model, T)`: the same network with T inside, made only of standard
Keras layers, so whatever loads a `.keras` file serves calibrated probabilities unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.model import architectures

if TYPE_CHECKING:
    import keras

# The output activation's logarithm: a softmax head gives log-probabilities, a sigmoid head the
# log of each class's score (its softmax is the normalised scores, as the training loss sees them).
LOG_ACTIVATIONS = {"softmax": "log_softmax", "sigmoid": "log_sigmoid"}
# Temperatures searched: far outside what a trained network needs either way.
TEMPERATURE_RANGE = (0.05, 20.0)
BINS = 15


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it does on test."""

    temperature: float
    test_ece: float
    test_ece_calibrated: float
    test_loss_calibrated: float


def softmax(log_scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities at `temperature` from log-scores (log-probabilities plus any row constant)."""
    scaled = np.asarray(log_scores, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(log_scores: np.ndarray, labels: np.ndarray, temperature: float):
    """Mean cross-entropy of the labels under softmax(log_scores / temperature)."""
    from scipy.special import logsumexp

    scaled = np.asarray(log_scores, dtype=np.float64) / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))


def fit_temperature(log_scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy of `labels` (the validation split's).

    The loss is convex in 1/T, so a bounded search over log T finds its one minimum.
    """
    from scipy.optimize import minimize_scalar

    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(log_scores, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, *, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin (equal widths over [0, 1]): mean confidence, accuracy, image count.

    Confidence is the probability of the predicted class; empty bins hold NaN.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return mean_confidence, accuracy, counts


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, *, bins: int = BINS
) -> float:
    """Expected calibration error: the image-weighted mean gap between confidence and accuracy
    over equal-width confidence bins (0 = calibrated)."""
    mean_confidence, accuracy, counts = reliability(probabilities, labels, bins=bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    return float((gaps * counts[filled]).sum() / counts.sum())


def calibrate(
    *, val_log_scores: np.ndarray, val_labels, test_log_scores: np.ndarray, test_labels
) -> Calibration:
    """Fit the temperature on validation; measure test ECE before and after, and test loss after."""
    temperature = fit_temperature(val_log_scores, val_labels)
    return Calibration(
        temperature=temperature,
        test_ece=expected_calibration_error(softmax(test_log_scores), test_labels),
        test_ece_calibrated=expected_calibration_error(
            softmax(test_log_scores, temperature), test_labels
        ),
        test_loss_calibrated=negative_log_likelihood(test_log_scores, test_labels, temperature),
    )


def _output_layer(model: keras.Model):
    """The model's output layer; ValueError unless it is a softmax or sigmoid dense layer."""
    head, activation = architectures.output_layer(model)
    if activation not in LOG_ACTIVATIONS:
        last = model.layers[-1] if model.layers else None
        raise ValueError(
            f"model {model.name!r} must end in a softmax or sigmoid Dense layer to be calibrated;"
            f" it ends in {last!r}"
        )
    return head, activation


def _chain(model: keras.Model, last: list) -> keras.Model:
    """A model of `model`'s layers except its output layer, followed by the layers in `last`
    (a keras.Sequential, or a one-output functional model such as
    `architectures.mirror_averaged`'s)."""
    import keras

    if isinstance(model, keras.Sequential):
        return keras.Sequential(
            [keras.Input(shape=model.input_shape[1:], name="image"), *model.layers[:-1], *last],
            name=model.name,
        )
    if len(model.inputs) != 1 or model.outputs[0] is not model.layers[-1].output:
        raise ValueError(f"model {model.name!r} has no single input and output layer to calibrate")
    outputs = model.layers[-1].input
    for layer in last:
        outputs = layer(outputs)
    return keras.Model(model.inputs[0], outputs, name=model.name)


def _log_head(head, activation: str, *, name: str):
    """A copy of the output layer that outputs the log of its activation."""
    return architectures.dense_copy(head, activation=LOG_ACTIVATIONS[activation], name=name)


def log_scores_model(model: keras.Model) -> keras.Model:
    """`model` with its output activation replaced by its logarithm (shares `model`'s weights
    except the output layer's, which it copies): exact log-probabilities, where taking the log
    of the probabilities would lose every one that rounds to 0 in float32."""
    head, activation = _output_layer(model)
    return _chain(model, [_log_head(head, activation, name="log_scores")])


def calibrated_model(model: keras.Model, temperature: float) -> keras.Model:
    """`model` answering calibrated probabilities: log-scores, divided by `temperature` in a
    fixed dense layer (kernel identity / T, no bias) whose softmax gives the output.

    Standard layers only, so `keras.saving.load_model` reads the saved file without custom
    objects; the output layer keeps the name `probabilities`.
    """
    head, activation = _output_layer(model)
    kernel = np.eye(head.units, dtype=np.float32) / np.float32(temperature)
    scale = architectures.fixed_dense(
        kernel, activation="softmax", name=architectures.HEAD, bias=False
    )
    return _chain(model, [_log_head(head, activation, name="log_scores"), scale])


@dataclass(frozen=True)
class ReliabilityCurve:
    """One model's reliability per confidence bin (`reliability`), named for a legend."""

    name: str
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    ece: float


def reliability_curves(
    labels: np.ndarray,
    *,
    before: np.ndarray,
    after: np.ndarray,
    temperature: float,
    bins: int = BINS,
) -> list[ReliabilityCurve]:
    """The reliability diagram's data (pipeline.figures draws it): before and after scaling."""
    curves = []
    for probabilities, name in ((before, "before"), (after, f"after (T = {temperature:.3f})")):
        mean_confidence, accuracy, counts = reliability(probabilities, labels, bins=bins)
        ece = expected_calibration_error(probabilities, labels, bins=bins)
        curves.append(ReliabilityCurve(name, mean_confidence, accuracy, counts, ece))
    return curves
