"""Stage `evaluate`, pure parts: scoring, choosing by validation, the check against training."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import contracts
from pipeline.champion import scoring


def val(accuracy: float, loss: float, *, test_accuracy=0.5, test_loss=1.0):
    return contracts.VariantMetrics(
        val_accuracy=accuracy,
        val_loss=loss,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        test_macro_f1=test_accuracy,
        temperature=1.0,
        test_ece=0.05,
        test_ece_calibrated=0.01,
        test_loss_calibrated=test_loss,
    )


@pytest.mark.parametrize(
    ("candidates", "select_by", "expected"),
    [
        pytest.param({"a": val(0.90, 0.30), "b": val(0.95, 0.50)}, "val_accuracy", "b", id="acc"),
        pytest.param({"a": val(0.90, 0.30), "b": val(0.95, 0.50)}, "val_loss", "a", id="loss"),
        # Equal accuracy: the lower loss wins, although the name would pick "a".
        pytest.param({"a": val(0.9, 0.3), "b": val(0.9, 0.2)}, "val_accuracy", "b", id="acc-tie"),
        pytest.param({"a": val(0.8, 0.2), "b": val(0.9, 0.2)}, "val_loss", "b", id="loss-tie"),
        pytest.param({"b": val(0.9, 0.2), "a": val(0.9, 0.2)}, "val_accuracy", "a", id="name"),
        pytest.param({"b": val(0.9, 0.2), "a": val(0.9, 0.2)}, "val_loss", "a", id="name-loss"),
        # 0.1 + 0.2 != 0.3 in floating point; rounding makes it a tie that the loss decides.
        pytest.param(
            {"a": val(0.1 + 0.2, 0.5), "b": val(0.3, 0.4)}, "val_accuracy", "b", id="float-noise"
        ),
    ],
)
def test_select_best_by_validation_metrics(candidates, select_by, expected):
    assert scoring.select_best(candidates, select_by=select_by) == expected


@pytest.mark.parametrize("select_by", ["val_accuracy", "val_loss"])
def test_select_best_ignores_test_metrics(select_by):
    candidates = {
        "better_val": val(0.90, 0.30, test_accuracy=0.50, test_loss=2.0),
        "better_test": val(0.85, 0.40, test_accuracy=0.99, test_loss=0.01),
    }
    assert scoring.select_best(candidates, select_by=select_by) == "better_val"


def test_select_best_without_candidates_is_an_error():
    with pytest.raises(ValueError, match="no trained variants"):
        scoring.select_best({}, select_by="val_accuracy")


def test_score_is_accuracy_and_plain_cross_entropy():
    probabilities = np.array([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    scores = scoring.score(probabilities, np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(scores.predictions, [0, 1, 2, 0])
    assert scores.accuracy == 0.75
    # The third image gives its true class probability 0, clipped to 1e-7.
    expected = -(np.log(0.5) + np.log(0.8) + np.log(1e-7) + np.log(1.0)) / 4
    assert scores.loss == pytest.approx(expected)


def images(count: int, *, first: int) -> np.ndarray:
    """`count` blank images, image i with pixel number `first + i` lit: its identity."""
    x = np.zeros((count, 28 * 28), np.float32)
    x[np.arange(count), first + np.arange(count)] = 1.0
    return x.reshape(count, 28, 28)


def answering(answers: dict[int, int], classes: int = 3):
    """A real Keras model (flatten, softmax dense) that gives the image lighting pixel p class
    `answers[p]` with probability ~1: the answers are set through its weights."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax", name="probabilities"),
        ]
    )
    kernel = np.zeros((28 * 28, classes), np.float32)
    for pixel, label in answers.items():
        kernel[pixel, label] = 30.0
    model.layers[-1].set_weights([kernel, np.zeros(classes, np.float32)])
    return model


def test_evaluate_scores_every_variant_and_chooses_by_validation():
    val_split = (images(4, first=0), np.array([0, 1, 2, 0]))
    test_split = (images(2, first=4), np.array([1, 2]))
    models = {
        # Right on all of validation, wrong on all of test.
        "val_star": answering({0: 0, 1: 1, 2: 2, 3: 0, 4: 0, 5: 0}),
        # Half right on validation, right on all of test.
        "test_star": answering({0: 0, 1: 1, 2: 0, 3: 1, 4: 1, 5: 2}),
    }
    result = scoring.evaluate(
        models=models,
        val=val_split,
        test=test_split,
        class_names=("a", "b", "c"),
        select_by="val_accuracy",
    )
    assert result.chosen == "val_star"
    assert result.best is result.variants["val_star"]
    assert result.variants["val_star"].metrics.val_accuracy == 1.0
    assert result.variants["val_star"].metrics.test_accuracy == 0.0
    assert result.variants["test_star"].metrics.val_accuracy == 0.5
    assert result.variants["test_star"].metrics.test_accuracy == 1.0
    assert result.variants["test_star"].metrics.test_macro_f1 == pytest.approx(2 / 3)
    np.testing.assert_array_equal(result.variants["test_star"].confusion[1:, 1:], np.eye(2))
    # Every variant gets a temperature fitted on validation and its test ECE before and after.
    for variant in result.variants.values():
        metrics = variant.metrics
        assert metrics.temperature > 0 and 0 <= metrics.test_ece_calibrated <= 1
        np.testing.assert_allclose(variant.calibrated_test.sum(axis=1), 1.0)
        np.testing.assert_array_equal(
            variant.calibrated_test.argmax(axis=1), variant.test.predictions
        )
    # Always right and sure on validation: the fit sharpens as far as it may.
    assert result.variants["val_star"].metrics.temperature < 1.0


def test_check_against_training_warns_about_a_model_train_did_not_validate():
    result = scoring.Evaluation(
        variants={
            "same": scoring.VariantEvaluation(val(0.75, 0.3), None, {}, "", np.zeros(0)),
            "swapped": scoring.VariantEvaluation(val(0.5, 0.3), None, {}, "", np.zeros(0)),
        },
        chosen="same",
    )
    trained = contracts.TrainMetrics(
        final_val_loss=0.3,
        final_val_accuracy=0.75,
        epochs_run=1,
        train_seconds=1.0,
        best_val_accuracy=0.75,
    )
    warnings = scoring.check_against_training(result, {"same": trained, "swapped": trained})
    assert len(warnings) == 1
    assert warnings[0].startswith("swapped: validation accuracy 0.500000 here")
