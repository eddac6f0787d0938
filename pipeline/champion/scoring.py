"""Evaluate's scoring: every variant's validation and test scores, its fitted temperature and
classification report, and the choice of one variant by validation (never by test)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import contracts, stopping
from pipeline.model import calibration

if TYPE_CHECKING:
    import keras

log = logging.getLogger("pipeline.stages.evaluate")
# A split as evaluate needs it: images and integer labels.
Labelled = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Scores:
    """What one model scored on one split."""

    accuracy: float
    loss: float
    predictions: np.ndarray = field(repr=False)
    probabilities: np.ndarray = field(repr=False)


def score(probabilities: np.ndarray, labels: np.ndarray) -> Scores:
    """Accuracy and plain (unsmoothed) cross-entropy of predicted probabilities."""
    clipped = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predictions = probabilities.argmax(axis=1)
    return Scores(
        accuracy=float((predictions == labels).mean()),
        loss=float(-np.log(clipped).mean()),
        predictions=predictions,
        probabilities=probabilities,
    )


def select_best(candidates: Mapping[str, contracts.VariantMetrics], *, select_by: str) -> str:
    """The variant with the best validation metric.

    Ties on `select_by` go to the better other validation metric, then to the name, so the choice
    is deterministic. Test metrics are deliberately not looked at.
    """
    if not candidates:
        raise ValueError("no trained variants to choose from; list some in train.variants")

    def key(name: str) -> tuple[float, float, str]:
        accuracy, loss = candidates[name].val_accuracy, candidates[name].val_loss
        primary, secondary = (-accuracy, loss) if select_by == "val_accuracy" else (loss, -accuracy)
        return (round(primary, 12), round(secondary, 12), name)

    return min(candidates, key=key)


def classification_report(
    labels: np.ndarray, predictions: np.ndarray, class_names: tuple[str, ...]
):
    """(report dict, report text, confusion matrix) from scikit-learn."""
    from sklearn import metrics

    label_ids = list(range(len(class_names)))
    report = metrics.classification_report(
        labels,
        predictions,
        labels=label_ids,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    text = metrics.classification_report(
        labels, predictions, labels=label_ids, target_names=class_names, digits=4, zero_division=0
    )
    confusion = metrics.confusion_matrix(labels, predictions, labels=label_ids)
    return report, text, confusion


def confusion_records(labels, predictions, class_names) -> list[dict[str, str]]:
    """Rows for DVC's confusion template."""
    return [
        {"actual": class_names[actual], "predicted": class_names[predicted]}
        for actual, predicted in zip(labels.tolist(), predictions.tolist(), strict=True)
    ]


def metric_key(text: str) -> str:
    return "".join(character if character.isalnum() else "_" for character in text).strip("_")


@dataclass(frozen=True)
class VariantEvaluation:
    """Everything `evaluate` measured for one variant."""

    metrics: contracts.VariantMetrics
    test: Scores = field(repr=False)
    report: dict[str, Any] = field(repr=False)
    report_text: str = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    # Test probabilities at the temperature fitted on validation (what the registry serves).
    calibrated_test: np.ndarray | None = field(repr=False, default=None)


@dataclass(frozen=True)
class Evaluation:
    """Every variant's results and the one chosen by validation."""

    variants: dict[str, VariantEvaluation]
    chosen: str

    @property
    def best(self) -> VariantEvaluation:
        return self.variants[self.chosen]


def evaluate_variant(
    model: keras.Model, *, val: Labelled, test: Labelled, class_names: tuple[str, ...]
) -> VariantEvaluation:
    """Score one model on validation and test, and fit its temperature on validation
    (`pipeline.model.calibration`); the classification report is on test."""
    scorer = calibration.log_scores_model(model)
    log_scores = {
        split: np.asarray(
            scorer.predict(x, batch_size=1024, verbose=0, callbacks=[stopping.when_asked()])
        )
        for split, (x, _) in (("val", val), ("test", test))
    }
    scores = {
        split: score(calibration.softmax(log_scores[split]), labels)
        for split, (_, labels) in (("val", val), ("test", test))
    }
    calibrated = calibration.calibrate(
        val_log_scores=log_scores["val"],
        val_labels=val[1],
        test_log_scores=log_scores["test"],
        test_labels=test[1],
    )
    report, report_text, confusion = classification_report(
        test[1], scores["test"].predictions, class_names
    )
    metrics = contracts.VariantMetrics(
        val_accuracy=scores["val"].accuracy,
        val_loss=scores["val"].loss,
        test_accuracy=scores["test"].accuracy,
        test_loss=scores["test"].loss,
        test_macro_f1=report["macro avg"]["f1-score"],
        **dataclasses.asdict(calibrated),
    )
    return VariantEvaluation(
        metrics,
        scores["test"],
        report,
        report_text,
        confusion,
        calibrated_test=calibration.softmax(log_scores["test"], calibrated.temperature),
    )


def evaluate(
    *,
    models: Mapping[str, keras.Model],
    val: Labelled,
    test: Labelled,
    class_names: tuple[str, ...],
    select_by: str,
) -> Evaluation:
    """Score every variant's model on validation and test and choose one by validation."""
    variants = {}
    for variant, model in models.items():
        variants[variant] = evaluate_variant(model, val=val, test=test, class_names=class_names)
        metrics = variants[variant].metrics
        log.info(
            "%s: val_accuracy %.4f  test_accuracy %.4f  test_loss %.4f",
            variant,
            metrics.val_accuracy,
            metrics.test_accuracy,
            metrics.test_loss,
        )
    chosen = select_best(
        {variant: result.metrics for variant, result in variants.items()}, select_by=select_by
    )
    return Evaluation(variants=variants, chosen=chosen)


def check_against_training(
    evaluation: Evaluation, trained: Mapping[str, contracts.TrainMetrics]
) -> list[str]:
    """Warnings for variants whose validation accuracy here is not the one `train` measured:
    then models/<variant>/model.keras is not the model that training validated."""
    warnings = []
    for variant, result in evaluation.variants.items():
        expected = trained[variant].final_val_accuracy
        if abs(result.metrics.val_accuracy - expected) > 1e-6:
            warnings.append(
                f"{variant}: validation accuracy {result.metrics.val_accuracy:.6f} here, but train"
                f" measured {expected:.6f}; model.keras is not the model train validated"
            )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
