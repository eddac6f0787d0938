"""Stage `evaluate`: test every trained variant, pick the best by validation, register it.

The best variant (by `evaluate.select_by` on the validation split, never by test results) becomes a
new version of the registered model; alias `champion` moves to it only if it beats the current
champion on this test set by `evaluate.min_improvement`, otherwise it gets alias `challenger`
(`pipeline.registry`). `evaluate()` scores and chooses; `main()` reads the trained variants, records
the results through `tracking` and writes `models/champion.json` (contracts.Champion), the DVC
metrics (contracts.EvaluateMetrics) and the chosen variant's plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import (
    calibration,
    config,
    contracts,
    datasets,
    devices,
    io,
    onnx_export,
    registry,
    stopping,
    tracking,
)
from pipeline.figures import confusion_figure, misclassified_figure, reliability_figure

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
# A split as evaluate needs it: images and integer labels.
Labelled = tuple[np.ndarray, np.ndarray]
INPUT_CONTRACT = (
    "28x28 grayscale image as float32 in [0, 1], shape (N, 28, 28); light object on dark"
    " background, like MNIST / Fashion-MNIST"
)


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
    (`pipeline.calibration`); the classification report is on test."""
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


def figures(
    result: VariantEvaluation,
    test: Labelled,
    class_names: tuple[str, ...],
    *,
    title: str,
    count: int,
) -> dict[str, Any]:
    """The variant's confusion matrix, most confident mistakes and reliability diagram, by PNG
    file name."""
    return {
        "confusion_matrix.png": confusion_figure(
            result.confusion, class_names, f"{title}: test confusion matrix"
        ),
        "misclassified.png": misclassified_figure(
            test[0], test[1], result.test, class_names, count=count, title=title
        ),
        "reliability.png": reliability_figure(
            calibration.reliability_curves(
                test[1],
                before=result.test.probabilities,
                after=result.calibrated_test,
                temperature=result.metrics.temperature,
            ),
            title=f"{title}: test reliability",
        ),
    }


def champion_accuracy_on(
    client, name: str, x_test, labels_test, *, scored: dict[str, float] | None = None
) -> float | None:
    """The current champion's accuracy on this test set, or None if there is no usable champion.

    `scored` maps run ids to test accuracies this stage already measured: a champion trained by
    one of those runs is the same model, so it is not downloaded and run a second time.
    """
    import mlflow.keras

    champion = registry.champion(client, name)
    if champion is None:
        return None
    if scored and champion.run_id in scored:
        return scored[champion.run_id]
    try:
        model = mlflow.keras.load_model(registry.alias_uri(name))
        probabilities = np.asarray(model.predict(x_test, batch_size=1024, verbose=0))
    except Exception as error:  # A champion we cannot run on this data cannot block the new one.
        log.warning("cannot evaluate champion v%s on this test set (%s)", champion.version, error)
        return None
    if (
        probabilities.ndim != 2
        or len(probabilities) != len(labels_test)
        or probabilities.shape[1] <= int(labels_test.max())
    ):
        log.warning("champion v%s has other classes than this test set", champion.version)
        return None
    return score(probabilities, labels_test).accuracy


def version_tags(
    evaluation: Evaluation,
    run: contracts.TrainedRun,
    meta: contracts.PreparedMeta,
    select_by: str,
    onnx: Mapping[str, str] | None = None,
) -> registry.VersionTags:
    """The registry tags of the chosen variant's version: what serving needs to know."""
    return registry.VersionTags(
        variant=evaluation.chosen,
        dataset=meta.dataset,
        data_sha256=meta.content_sha256,
        git_commit=tracking.run_tags("evaluate")["git_commit"],
        run_id=run.run_id,
        class_names=meta.class_names,
        input_contract=INPUT_CONTRACT,
        content_size=datasets.content_size(meta.dataset),
        selected_by=select_by,
        metrics=dataclasses.asdict(evaluation.best.metrics),
        onnx=dict(onnx or {}),
    )


def description(
    evaluation: Evaluation, run: contracts.TrainedRun, meta: contracts.PreparedMeta, select_by: str
) -> str:
    """The registered version's description, for people browsing the registry."""
    metrics = evaluation.best.metrics
    return (
        f"Variant `{evaluation.chosen}` trained on {meta.dataset} (run {run.run_id}), chosen by"
        f" {select_by}. Validation accuracy {metrics.val_accuracy:.4f}, test"
        f" accuracy {metrics.test_accuracy:.4f}. Probabilities calibrated by temperature"
        f" {metrics.temperature:.3f} (fitted on validation; test ECE {metrics.test_ece:.4f} ->"
        f" {metrics.test_ece_calibrated:.4f}). Classes: {', '.join(meta.class_names)}."
        f" Input: {INPUT_CONTRACT}."
    )


def register_chosen(
    client,
    evaluation: Evaluation,
    *,
    runs: Mapping[str, contracts.TrainedRun],
    meta: contracts.PreparedMeta,
    test: Labelled,
    name: str,
    settings: config.EvaluateConfig,
    model_uri: str,
    onnx: Mapping[str, str] | None = None,
) -> registry.Registration:
    """Register the chosen variant's `model_uri` (its calibrated model, logged to its training
    run, with its ONNX files described by the `onnx` tags) and put it through the promotion
    gate."""
    run = runs[evaluation.chosen]
    scored = {
        runs[variant].run_id: result.metrics.test_accuracy
        for variant, result in evaluation.variants.items()
    }
    registration = registry.register(
        client,
        name=name,
        run_id=run.run_id,
        model_uri=model_uri,
        tags=version_tags(evaluation, run, meta, settings.select_by, onnx),
        description=description(evaluation, run, meta, settings.select_by),
        test_accuracy=evaluation.best.metrics.test_accuracy,
        champion_test_accuracy=champion_accuracy_on(client, name, *test, scored=scored),
        min_improvement=settings.min_improvement,
    )
    log.info(
        "chose %s by %s; %s v%s: %s",
        evaluation.chosen,
        settings.select_by,
        name,
        registration.version,
        registration.reason,
    )
    return registration


def champion_record(
    client, registration: registry.Registration, *, chosen: str
) -> contracts.Champion:
    """models/champion.json: the version that is champion now, whichever evaluation made it."""
    name = registration.name
    version = client.get_model_version(name, registration.champion_version)
    tags = registry.VersionTags.from_tags(version.tags)
    return contracts.Champion(
        registered_model=name,
        version=int(version.version),
        model_uri=registry.version_uri(name, version.version),
        alias_uri=registry.alias_uri(name),
        variant=tags.variant,
        run_id=version.run_id,
        class_names=tags.class_names or (),
        metrics=tags.metrics,
        tracking_uri=tracking.tracking_uri(),
        candidate=contracts.Candidate(
            variant=chosen,
            version=int(registration.version),
            promoted=registration.promoted,
            reason=registration.reason,
        ),
    )


def evaluate_metrics(
    evaluation: Evaluation, registration: registry.Registration
) -> contracts.EvaluateMetrics:
    """metrics/evaluate.json: every variant's results, and the choice."""
    chosen = contracts.Chosen(
        variant=evaluation.chosen,
        version=int(registration.version),
        promoted=registration.promoted,
        **dataclasses.asdict(evaluation.best.metrics),
    )
    variants = {variant: result.metrics for variant, result in evaluation.variants.items()}
    return contracts.EvaluateMetrics(variants=variants, chosen=chosen)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's command line; dvc.yaml gives every path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared data folder")
    parser.add_argument("--models", type=Path, required=True, help="holds <variant>/ folders")
    parser.add_argument(
        "--train-metrics", type=Path, required=True, help="holds <variant>.json from train"
    )
    parser.add_argument("--out", type=Path, required=True, help="champion.json")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics (JSON)")
    parser.add_argument("--plots", type=Path, required=True, help="folder for the DVC plots")
    return parser.parse_args(argv)


def load_split(path: Path) -> Labelled:
    with np.load(path) as data:
        return data["x"], data["labels"]


def record(
    evaluation: Evaluation,
    *,
    runs: Mapping[str, contracts.TrainedRun],
    test: Labelled,
    meta: contracts.PreparedMeta,
    count: int,
) -> dict[str, Any]:
    """Log every variant's results to its training run; return the chosen one's figures
    ({file name: figure}), which `write_plots` saves with the stage's other outputs."""
    from matplotlib import pyplot

    chosen_figures = {}
    test_inputs = tracking.dataset_inputs(
        name=meta.dataset,
        content_sha256=meta.content_sha256,
        source=meta.source,
        splits={"testing": test},
    )
    for variant, result in evaluation.variants.items():
        stopping.checkpoint()
        tracking.log_datasets(runs[variant].run_id, test_inputs)
        drawn = figures(
            result, test, meta.class_names, title=f"{meta.dataset} {variant}", count=count
        )
        per_class = {
            f"test_f1_{metric_key(name)}": result.report[name]["f1-score"]
            for name in meta.class_names
        }
        test_metrics = {
            key: value
            for key, value in dataclasses.asdict(result.metrics).items()
            if key.startswith("test") or key == "temperature"
        }
        tracking.log_evaluation(
            runs[variant].run_id,
            metrics=test_metrics | per_class,
            report=result.report,
            report_text=result.report_text,
            figures=drawn,
        )
        if variant == evaluation.chosen:
            chosen_figures = drawn
        else:
            for figure in drawn.values():
                pyplot.close(figure)
    return chosen_figures


def write_plots(
    plots: Path, figures: Mapping[str, Any], evaluation: Evaluation, *, labels, class_names
) -> None:
    """The DVC plots of the chosen variant: its figures and one confusion record per image."""
    for file_name, figure in figures.items():
        io.save_figure(plots / file_name, figure)
    io.write_json(
        plots / "confusion.json",
        confusion_records(labels, evaluation.best.test.predictions, class_names),
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        # A stop anywhere is honoured at the next safe point (pipeline.stopping), never mid-write.
        with stopping.stoppable():
            run_stage(parse_args(argv))
    except tracking.Stopped as stopped:
        outcome = (
            "it had begun registering, so it finished first: the registration and every output"
            " are complete"
            if stopping.committed()
            else "nothing was registered or written"
        )
        log.error("evaluate: %s; every training run keeps its status; %s", stopped, outcome)
        raise SystemExit(128 + stopped.signum) from None


def run_stage(args: argparse.Namespace) -> None:
    """Score every variant, record the results, register the chosen one, write the outputs."""
    devices.import_tensorflow()
    import keras

    params = config.load(args.params)
    if params.train is None:
        raise SystemExit("params.yaml has no train section: nothing to evaluate")
    variants = params.train.variants
    meta = contracts.PreparedMeta.read(args.data / contracts.PreparedMeta.file_name)
    val, test = load_split(args.data / "val.npz"), load_split(args.data / "test.npz")
    runs = {
        v: contracts.TrainedRun.read(args.models / v / contracts.TrainedRun.file_name)
        for v in variants
    }
    trained = {v: contracts.TrainMetrics.read(args.train_metrics / f"{v}.json") for v in variants}
    models = {
        v: keras.saving.load_model(args.models / v / "model.keras", compile=False) for v in variants
    }
    log.info("evaluate: %d variant(s) loaded: %s", len(models), ", ".join(models))
    stopping.checkpoint()

    evaluation = evaluate(
        models=models,
        val=val,
        test=test,
        class_names=meta.class_names,
        select_by=params.evaluate.select_by,
    )
    check_against_training(evaluation, trained)
    client = tracking.connect()
    figures = record(
        evaluation, runs=runs, test=test, meta=meta, count=params.evaluate.misclassified_examples
    )
    best = evaluation.best.metrics
    served = calibration.calibrated_model(models[evaluation.chosen], best.temperature)
    stopping.checkpoint()
    with tempfile.TemporaryDirectory() as scratch:
        # The ONNX files are checked before anything is logged or registered.
        onnx_files = onnx_export.build_files(
            served,
            Path(scratch),
            val=val,
            test=test,
            train_images=load_split(args.data / "train.npz")[0],
            rule=params.evaluate.int8,
        )
        stopping.checkpoint()
        calibrated_uri = tracking.log_calibrated_model(
            runs[evaluation.chosen].run_id, served, example=val[0][:8], onnx_folder=Path(scratch)
        )
    # Registering and writing the outputs is not cut short: a stop from here waits for the end.
    stopping.begin_commit()
    with tracking.registry_lock():
        registration = register_chosen(
            client,
            evaluation,
            runs=runs,
            meta=meta,
            test=test,
            name=params.registered_model,
            settings=params.evaluate,
            model_uri=calibrated_uri,
            onnx=onnx_files.as_tags(),
        )
    # The outputs come last, so a stage stopped before this point has written none of them.
    write_plots(args.plots, figures, evaluation, labels=test[1], class_names=meta.class_names)
    champion = champion_record(client, registration, chosen=evaluation.chosen)
    champion.write(args.out)
    evaluate_metrics(evaluation, registration).write(args.metrics)
    log.info("champion: %s v%s -> %s", champion.registered_model, champion.version, args.out)


if __name__ == "__main__":
    main()
