"""Evaluate's hand-off to the registry: the chosen variant's version (tags, description), the
promotion gate against the current champion, and the records the stage writes about it
(models/champion.json, metrics/evaluate.json)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from pipeline import config, contracts, tracking
from pipeline.champion import promotion, registry
from pipeline.champion.scoring import Evaluation, Labelled, score
from pipeline.data import datasets

log = logging.getLogger("pipeline.stages.evaluate")
INPUT_CONTRACT = (
    "28x28 grayscale image as float32 in [0, 1], shape (N, 28, 28); light object on dark"
    " background, like MNIST / Fashion-MNIST"
)


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


def served_costs(onnx: Mapping[str, str]) -> dict[str, float]:
    """The served file's costs from its `served_*` tags (pipeline.model.int8.OnnxFiles)."""
    return {
        key: float(onnx[f"served_{key}"])
        for key in ("latency_ms", "file_mib", "session_mib")
        if f"served_{key}" in onnx
    }


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
    registration = promotion.register(
        client,
        name=name,
        run_id=run.run_id,
        model_uri=model_uri,
        tags=version_tags(evaluation, run, meta, settings.select_by, onnx),
        description=description(evaluation, run, meta, settings.select_by),
        test_accuracy=evaluation.best.metrics.test_accuracy,
        champion_test_accuracy=champion_accuracy_on(client, name, *test, scored=scored),
        min_improvement=settings.min_improvement,
        over_budget=settings.budget.exceeded(served_costs(onnx or {})),
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
