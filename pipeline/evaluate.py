"""Stage `evaluate`: test every trained variant, pick the best by validation, register it.

The best variant (by `evaluate.select_by` on the validation split, never by test results) becomes a
new version of the registered model; alias `champion` moves to it only if it beats the current
champion on this test set by `evaluate.min_improvement`, otherwise it gets alias `challenger`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config, datasets, io, tracking

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
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


def select_best(candidates: dict[str, dict[str, float]], *, select_by: str) -> str:
    """The variant with the best validation metric.

    Ties on `select_by` go to the better other validation metric, then to the name, so the choice
    is deterministic. Test metrics are deliberately not looked at.
    """
    if not candidates:
        raise ValueError("no trained variants to choose from; list some in train.variants")

    def key(name: str) -> tuple[float, float, str]:
        metrics = candidates[name]
        accuracy, loss = metrics["val_accuracy"], metrics["val_loss"]
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


def confusion_figure(confusion: np.ndarray, class_names: tuple[str, ...], title: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(8, 7))
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = confusion.max() / 2
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            value = confusion[row, column]
            color = "white" if value > threshold else "black"
            axis.text(column, row, str(value), ha="center", va="center", fontsize=7, color=color)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def misclassified_figure(images, labels, scores: Scores, class_names, *, count: int, title: str):
    """A grid of the most confidently wrong test images, labelled predicted vs true."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    wrong = np.flatnonzero(scores.predictions != labels)
    confidence = scores.probabilities[wrong, scores.predictions[wrong]]
    chosen = wrong[np.argsort(-confidence)][:count]
    columns = 5
    rows = max(1, int(np.ceil(len(chosen) / columns)))
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(columns * 2.2, rows * 2.4), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, chosen, strict=False):
        axis.imshow(images[index], cmap="gray", vmin=0.0, vmax=1.0)
        predicted = class_names[scores.predictions[index]]
        probability = scores.probabilities[index, scores.predictions[index]]
        axis.set_title(
            f"pred: {predicted} ({probability:.0%})\ntrue: {class_names[labels[index]]}", fontsize=8
        )
    figure.suptitle(f"{title}: {len(wrong)} misclassified, most confident shown")
    figure.tight_layout()
    return figure


def confusion_records(labels, predictions, class_names) -> list[dict[str, str]]:
    """Rows for DVC's confusion template."""
    return [
        {"actual": class_names[actual], "predicted": class_names[predicted]}
        for actual, predicted in zip(labels.tolist(), predictions.tolist(), strict=True)
    ]


def metric_key(text: str) -> str:
    return "".join(character if character.isalnum() else "_" for character in text).strip("_")


@dataclass(frozen=True)
class Registration:
    """The outcome of registering the chosen variant."""

    name: str
    # Versions are strings: a SQLite store gives ints, a tracking server strings.
    version: str
    promoted: bool
    reason: str
    champion_version: str


def version_for_run(client, name: str, run_id: str):
    """The registered version whose source run is `run_id`, if any (so re-runs add nothing)."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda version: int(version.version)) if versions else None


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register(
    client,
    *,
    name: str,
    run_id: str,
    model_uri: str,
    tags: dict[str, str],
    description: str,
    test_accuracy: float,
    champion_test_accuracy: float | None,
    min_improvement: float,
) -> Registration:
    """Register (or reuse) the version for `run_id` and apply the promotion gate.

    `champion_test_accuracy` is the current champion's accuracy on the same test set, or None
    when there is no champion yet.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="MNIST-style image classifier; see the version tags for details."
        )
    version = version_for_run(client, name, run_id)
    if version is None:
        # A tracking server rejects a `models:/<model_id>` source unless the model id comes along.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
        version = client.create_model_version(
            name,
            source=model_uri,
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=model_id,
        )
        log.info("registered %s version %s from run %s", name, version.version, run_id)
    else:
        log.info("run %s is already %s version %s: reusing it", run_id, name, version.version)
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.update_model_version(name, version.version, description=description)

    champion = current_champion(client, name)
    if champion is not None and champion.version == version.version:
        return Registration(
            name, str(version.version), True, "already the champion", str(version.version)
        )
    if champion is None:
        promoted, reason = True, "first version: no champion yet"
    elif champion_test_accuracy is None:
        promoted, reason = True, f"champion v{champion.version} cannot be scored on this test set"
    else:
        gain = test_accuracy - champion_test_accuracy
        promoted = gain > 0 and gain >= min_improvement
        comparison = (
            f"test accuracy {test_accuracy:.4f} vs champion v{champion.version}"
            f" {champion_test_accuracy:.4f} (gain {gain:+.4f}, needed > 0 and >= {min_improvement})"
        )
        reason = ("beats the champion: " if promoted else "not promoted: ") + comparison
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        try:
            challenger = client.get_model_version_by_alias(name, CHALLENGER)
            if challenger.version == version.version:
                client.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException:
            pass
        return Registration(name, str(version.version), True, reason, str(version.version))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return Registration(name, str(version.version), False, reason, str(champion.version))


def champion_accuracy_on(
    client, name: str, x_test, labels_test, *, scored: dict[str, float] | None = None
) -> float | None:
    """The current champion's accuracy on this test set, or None if there is no usable champion.

    `scored` maps run ids to test accuracies this stage already measured: a champion trained by
    one of those runs is the same model, so it is not downloaded and run a second time.
    """
    import mlflow.keras

    champion = current_champion(client, name)
    if champion is None:
        return None
    if scored and champion.run_id in scored:
        return scored[champion.run_id]
    try:
        model = mlflow.keras.load_model(f"models:/{name}@{CHAMPION}")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--train-metrics", type=Path, default=Path("metrics/train"))
    parser.add_argument("--out", type=Path, default=Path("models/champion.json"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    parser.add_argument("--plots", type=Path, default=Path("plots/evaluate"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import keras
    import mlflow

    params = config.load(args.params)
    if params.train is None:
        raise SystemExit("params.yaml has no train section: nothing to evaluate")
    settings = params.evaluate
    meta = json.loads((args.data / "meta.json").read_text())
    class_names = tuple(meta["class_names"])
    splits = {}
    for split in ("val", "test"):
        with np.load(args.data / f"{split}.npz") as data:
            splits[split] = (data["x"], data["labels"])
    x_test, labels_test = splits["test"]

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = mlflow.MlflowClient()
    results: dict[str, dict[str, Any]] = {}
    for variant in params.train.variants:
        run = json.loads((args.models / variant / "run.json").read_text())
        model = keras.saving.load_model(args.models / variant / "model.keras", compile=False)
        scores = {
            split: score(np.asarray(model.predict(x, batch_size=1024, verbose=0)), labels)
            for split, (x, labels) in splits.items()
        }
        report, report_text, confusion = classification_report(
            labels_test, scores["test"].predictions, class_names
        )
        title = f"{meta['dataset']} {variant}"
        confusion_png = confusion_figure(confusion, class_names, f"{title}: test confusion matrix")
        wrong_png = misclassified_figure(
            x_test,
            labels_test,
            scores["test"],
            class_names,
            count=settings.misclassified_examples,
            title=title,
        )
        metrics = {
            "val_accuracy": scores["val"].accuracy,
            "val_loss": scores["val"].loss,
            "test_accuracy": scores["test"].accuracy,
            "test_loss": scores["test"].loss,
            "test_macro_f1": report["macro avg"]["f1-score"],
        }
        with mlflow.start_run(run_id=run["run_id"]):
            per_class = {
                f"test_f1_{metric_key(name)}": report[name]["f1-score"] for name in class_names
            }
            mlflow.log_metrics(
                {key: value for key, value in metrics.items() if key.startswith("test")} | per_class
            )
            mlflow.log_text(report_text, "evaluation/classification_report.txt")
            mlflow.log_dict(report, "evaluation/classification_report.json")
            mlflow.log_figure(confusion_png, "evaluation/confusion_matrix.png")
            mlflow.log_figure(wrong_png, "evaluation/misclassified.png")
        results[variant] = {
            "run": run,
            "metrics": metrics,
            # Kept until the choice: the chosen variant's plots are the ones dvc.yaml declares.
            "figures": {"confusion_matrix.png": confusion_png, "misclassified.png": wrong_png},
            "confusion": confusion_records(labels_test, scores["test"].predictions, class_names),
        }
        log.info(
            "%s: val_accuracy %.4f  test_accuracy %.4f  test_loss %.4f",
            variant,
            metrics["val_accuracy"],
            metrics["test_accuracy"],
            metrics["test_loss"],
        )

    chosen = select_best(
        {variant: result["metrics"] for variant, result in results.items()},
        select_by=settings.select_by,
    )
    best = results[chosen]
    from matplotlib import pyplot

    for variant, result in results.items():
        for file_name, figure in result.pop("figures").items():
            if variant == chosen:
                io.save_figure(args.plots / file_name, figure)
            else:
                pyplot.close(figure)
    io.write_json(args.plots / "confusion.json", best["confusion"])
    name = params.registered_model
    tags = {
        "variant": chosen,
        "dataset": meta["dataset"],
        "data_sha256": io.digest(meta["sha256"]),
        "git_commit": tracking.run_tags("evaluate")["git_commit"],
        "run_id": best["run"]["run_id"],
        "class_names": json.dumps(list(class_names)),
        "input_contract": INPUT_CONTRACT,
        "content_size": str(datasets.content_size(meta["dataset"])),
        "selected_by": settings.select_by,
    } | {key: f"{value:.6f}" for key, value in best["metrics"].items()}
    description = (
        f"Variant `{chosen}` trained on {meta['dataset']} (run {best['run']['run_id']}), chosen by"
        f" {settings.select_by}. Validation accuracy {best['metrics']['val_accuracy']:.4f}, test"
        f" accuracy {best['metrics']['test_accuracy']:.4f}. Classes: {', '.join(class_names)}."
        f" Input: {INPUT_CONTRACT}."
    )
    registration = register(
        client,
        name=name,
        run_id=best["run"]["run_id"],
        model_uri=best["run"]["model_uri"],
        tags=tags,
        description=description,
        test_accuracy=best["metrics"]["test_accuracy"],
        champion_test_accuracy=champion_accuracy_on(
            client,
            name,
            x_test,
            labels_test,
            scored={
                result["run"]["run_id"]: result["metrics"]["test_accuracy"]
                for result in results.values()
            },
        ),
        min_improvement=settings.min_improvement,
    )
    log.info(
        "chose %s by %s; %s v%s: %s",
        chosen,
        settings.select_by,
        name,
        registration.version,
        registration.reason,
    )

    champion = client.get_model_version(name, registration.champion_version)
    champion_json = {
        "registered_model": name,
        # int: a SQLite store gives the version as an int, a tracking server as a string.
        "version": int(champion.version),
        "model_uri": f"models:/{name}/{champion.version}",
        "alias_uri": f"models:/{name}@{CHAMPION}",
        "variant": champion.tags.get("variant"),
        "run_id": champion.run_id,
        "class_names": json.loads(champion.tags.get("class_names", "[]")),
        "metrics": {
            key: float(champion.tags[key]) for key in best["metrics"] if key in champion.tags
        },
        "tracking_uri": tracking.tracking_uri(),
        "candidate": {
            "variant": chosen,
            "version": int(registration.version),
            "promoted": registration.promoted,
            "reason": registration.reason,
        },
    }
    io.write_json(args.out, champion_json)
    io.write_json(
        args.metrics,
        {
            "variants": {variant: result["metrics"] for variant, result in results.items()},
            "chosen": {
                "variant": chosen,
                "version": int(registration.version),
                "promoted": registration.promoted,
            }
            | best["metrics"],
        },
    )
    log.info("champion: %s v%s -> %s", name, champion.version, args.out)


if __name__ == "__main__":
    main()
