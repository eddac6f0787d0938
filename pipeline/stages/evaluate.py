"""Stage `evaluate`: test every trained variant, pick the best by validation, register it.

The best variant (by `evaluate.select_by` on the validation split, never by test results) becomes a
new version of the registered model; alias `champion` moves to it only if it beats the current
champion on this test set by `evaluate.min_improvement`, otherwise it gets alias `challenger`
(`pipeline.champion.registry`). `pipeline.champion.scoring` scores and chooses;
`pipeline.champion.handoff` registers the
choice; `main()` reads the trained variants, exports the served network
(`pipeline.model.onnx_export`),
records the results through `tracking` and writes `models/champion.json` (contracts.Champion), the
DVC metrics (contracts.EvaluateMetrics) and the chosen variant's plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import config, contracts, io, stopping, tracking
from pipeline.champion import handoff, scoring
from pipeline.champion.scoring import Evaluation, Labelled, VariantEvaluation
from pipeline.figures import confusion_figure, misclassified_figure, reliability_figure
from pipeline.model import calibration, devices, int8

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


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
            f"test_f1_{scoring.metric_key(name)}": result.report[name]["f1-score"]
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
        scoring.confusion_records(labels, evaluation.best.test.predictions, class_names),
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


def load_variants(args: argparse.Namespace, variants: tuple[str, ...]):
    """Each variant's training run record, training metrics and saved model, by name."""
    import keras

    runs = {
        v: contracts.TrainedRun.read(args.models / v / contracts.TrainedRun.file_name)
        for v in variants
    }
    trained = {v: contracts.TrainMetrics.read(args.train_metrics / f"{v}.json") for v in variants}
    models = {
        v: keras.saving.load_model(args.models / v / "model.keras", compile=False) for v in variants
    }
    log.info("evaluate: %d variant(s) loaded: %s", len(models), ", ".join(models))
    return runs, trained, models


def log_served_model(
    served: keras.Model,
    run_id: str,
    *,
    val: Labelled,
    test: Labelled,
    train_images: np.ndarray,
    rule: config.Int8Config,
) -> tuple[str, dict[str, str]]:
    """Export the served network to ONNX (checked against Keras on validation; int8 adopted by
    `rule`) and log it with both files to the chosen variant's training run: the logged model's
    URI and the ONNX tags for its registered version. The files are checked before anything is
    logged."""
    with tempfile.TemporaryDirectory() as scratch:
        onnx_files = int8.build_files(
            served, Path(scratch), val=val, test=test, train_images=train_images, rule=rule
        )
        stopping.checkpoint()
        uri = tracking.log_calibrated_model(
            run_id, served, example=val[0][:8], onnx_folder=Path(scratch)
        )
    return uri, onnx_files.as_tags()


def run_stage(args: argparse.Namespace) -> None:
    """Score every variant, record the results, register the chosen one, write the outputs."""
    devices.import_tensorflow()
    params = config.load(args.params)
    if params.train is None:
        raise SystemExit("params.yaml has no train section: nothing to evaluate")
    variants = params.train.variants
    meta = contracts.PreparedMeta.read(args.data / contracts.PreparedMeta.file_name)
    val, test = load_split(args.data / "val.npz"), load_split(args.data / "test.npz")
    runs, trained, models = load_variants(args, variants)
    stopping.checkpoint()

    evaluation = scoring.evaluate(
        models=models,
        val=val,
        test=test,
        class_names=meta.class_names,
        select_by=params.evaluate.select_by,
    )
    scoring.check_against_training(evaluation, trained)
    client = tracking.connect()
    figures = record(
        evaluation, runs=runs, test=test, meta=meta, count=params.evaluate.misclassified_examples
    )
    best = evaluation.best.metrics
    served = calibration.calibrated_model(models[evaluation.chosen], best.temperature)
    stopping.checkpoint()
    calibrated_uri, onnx_tags = log_served_model(
        served,
        runs[evaluation.chosen].run_id,
        val=val,
        test=test,
        train_images=load_split(args.data / "train.npz")[0],
        rule=params.evaluate.int8,
    )
    # Registering and writing the outputs is not cut short: a stop from here waits for the end.
    stopping.begin_commit()
    with tracking.registry_lock():
        registration = handoff.register_chosen(
            client,
            evaluation,
            runs=runs,
            meta=meta,
            test=test,
            name=params.registered_model,
            settings=params.evaluate,
            model_uri=calibrated_uri,
            onnx=onnx_tags,
        )
    # The outputs come last, so a stage stopped before this point has written none of them.
    write_plots(args.plots, figures, evaluation, labels=test[1], class_names=meta.class_names)
    champion = handoff.champion_record(client, registration, chosen=evaluation.chosen)
    champion.write(args.out)
    handoff.evaluate_metrics(evaluation, registration).write(args.metrics)
    log.info("champion: %s v%s -> %s", champion.registered_model, champion.version, args.out)


if __name__ == "__main__":
    main()
