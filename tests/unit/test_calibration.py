"""Temperature scaling: it moves over- and under-confident models the right way, ECE measures
the gap it closes, and the calibrated Keras model answers what the numbers say and reloads."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline import figures
from pipeline.config import ConvBlockConfig, ModelConfig
from pipeline.model import architectures, calibration


def synthetic_scores(confidence_scale: float, *, count: int = 6000, seed: int = 0):
    """Labels drawn from known class probabilities, and a model's log-scores that are those
    log-probabilities multiplied by `confidence_scale` (> 1: over-confident, < 1: under-)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(count, 10)) * 2.5
    true_probabilities = calibration.softmax(true_logits)
    labels = (rng.random((count, 1)) > true_probabilities.cumsum(axis=1)).sum(axis=1)
    return true_logits * confidence_scale, labels


@pytest.mark.parametrize(
    ("scale", "expected_temperature"),
    [pytest.param(3.0, 3.0, id="over-confident"), pytest.param(1 / 3, 1 / 3, id="under-confident")],
)
def test_fitted_temperature_undoes_miscalibration_and_lowers_ece(scale, expected_temperature):
    val_scores, val_labels = synthetic_scores(scale, seed=1)
    test_scores, test_labels = synthetic_scores(scale, seed=2)
    temperature = calibration.fit_temperature(val_scores, val_labels)
    # T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.
    assert temperature == pytest.approx(expected_temperature, rel=0.1)
    result = calibration.calibrate(
        val_log_scores=val_scores,
        val_labels=val_labels,
        test_log_scores=test_scores,
        test_labels=test_labels,
    )
    assert result.temperature == temperature
    assert result.test_ece > 0.1
    assert result.test_ece_calibrated < 0.03
    before = calibration.negative_log_likelihood(test_scores, test_labels, 1.0)
    assert result.test_loss_calibrated < before


def test_calibrated_model_keeps_temperature_one():
    scores, labels = synthetic_scores(1.0, seed=3)
    assert calibration.fit_temperature(scores, labels) == pytest.approx(1.0, rel=0.1)
    assert calibration.expected_calibration_error(calibration.softmax(scores), labels) < 0.03


def test_temperature_never_changes_the_predicted_class():
    scores, _ = synthetic_scores(2.0, seed=4)
    for temperature in (0.2, 1.0, 7.0):
        probabilities = calibration.softmax(scores, temperature)
        np.testing.assert_array_equal(probabilities.argmax(axis=1), scores.argmax(axis=1))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_ece_by_hand():
    # Two images at confidence 0.9 (one right: accuracy 0.5, gap 0.4) and two at 0.6, both right
    # (gap 0.4): ECE 0.4. Probabilities of the other classes split the rest.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
    confidence, accuracy, counts = calibration.reliability(probabilities, labels, bins=10)
    assert counts.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert confidence[8] == pytest.approx(0.9) and accuracy[8] == pytest.approx(0.5)
    assert np.isnan(accuracy[0])


@pytest.mark.parametrize("mirrored", [False, True], ids=["plain", "mirror-averaged"])
@pytest.mark.parametrize("output_activation", ["softmax", "sigmoid"])
def test_calibrated_keras_model_serves_what_the_numbers_say(tmp_path, output_activation, mirrored):
    keras.utils.set_random_seed(0)
    config = ModelConfig(
        architecture="cnn",
        conv_blocks=(ConvBlockConfig(filters=4),),
        dense=(16,),
        batch_norm=True,
        output_activation=output_activation,
    )
    model = architectures.build(config, num_classes=10)
    if mirrored:
        model = architectures.mirror_averaged(model)
    images = np.random.default_rng(5).random((32, 28, 28), dtype=np.float32)
    outputs = np.asarray(model(images))
    log_scores = np.asarray(calibration.log_scores_model(model)(images))
    # At T = 1 the log-scores give the model's own probabilities (a sigmoid's normalised).
    expected = outputs / outputs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(calibration.softmax(log_scores), expected, atol=1e-5)

    temperature = 2.5
    path = tmp_path / "calibrated.keras"
    calibration.calibrated_model(model, temperature).save(path)
    # What serving does: a plain load, no custom objects.
    served = keras.saving.load_model(path, compile=False)
    assert served.layers[-1].name == architectures.HEAD and served.output_shape == (None, 10)
    np.testing.assert_allclose(
        np.asarray(served(images)), calibration.softmax(log_scores, temperature), atol=1e-5
    )
    # The original model is untouched.
    np.testing.assert_allclose(np.asarray(model(images)), outputs)


def test_a_model_without_a_probability_head_is_refused():
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="softmax or sigmoid Dense"):
        calibration.calibrated_model(model, 2.0)


def test_a_functional_model_with_two_inputs_is_refused():
    left, right = keras.Input((28, 28)), keras.Input((28, 28))
    joined = keras.layers.Flatten()(keras.layers.Concatenate()([left, right]))
    model = keras.Model([left, right], keras.layers.Dense(3, activation="softmax")(joined))
    with pytest.raises(ValueError, match="no single input and output layer"):
        calibration.calibrated_model(model, 2.0)


def test_reliability_figure_shows_both_curves():
    scores, labels = synthetic_scores(3.0, seed=6)
    curves = calibration.reliability_curves(
        labels,
        before=calibration.softmax(scores),
        after=calibration.softmax(scores, 3.0),
        temperature=3.0,
    )
    figure = figures.reliability_figure(curves, title="synthetic")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend[0] == "calibrated"
    assert legend[1].startswith("before: ECE") and legend[2].startswith("after (T = 3.000)")
