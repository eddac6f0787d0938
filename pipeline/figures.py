"""Every figure the pipeline draws, as a matplotlib figure for `io.save_figure` or MLflow.

`train` draws the training curves; `evaluate` the confusion matrix, the most confidently wrong
test images and the reliability diagram. Drawing only: the numbers come from the stages and
`pipeline.model.calibration`. matplotlib is imported by each function (it costs a second).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def curves_figure(history: dict[str, list[float]], title: str):
    """Training curves: loss and accuracy per epoch, training and validation."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", loss_axis), ("accuracy", accuracy_axis)):
        axis.plot(epochs, history[key], label=f"train {key}")
        axis.plot(epochs, history[f"val_{key}"], label=f"val {key}")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_figure(confusion: np.ndarray, class_names: tuple[str, ...], title: str):
    """The confusion matrix with its counts: true classes down, predicted across."""
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


def misclassified_figure(images, labels, scores: Any, class_names, *, count: int, title: str):
    """A grid of the most confidently wrong test images, labelled predicted vs true (`scores`:
    their `predictions` and `probabilities`, a `pipeline.stages.evaluate.Scores`)."""
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


def reliability_figure(curves: Sequence[Any], *, title: str):
    """Reliability diagram: accuracy against confidence per bin for each curve (before and after
    scaling, `pipeline.model.calibration.reliability_curves`), with the share of images in each bin
    below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (curve, share) = pyplot.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curve.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    bins = len(curves[0].counts)
    edges = np.linspace(0, 1, bins + 1)
    width = 1 / bins
    for drawn, offset in zip(curves, (-0.25, 0.25), strict=True):
        curve.plot(
            drawn.mean_confidence,
            drawn.accuracy,
            marker="o",
            label=f"{drawn.name}: ECE {drawn.ece:.4f}",
        )
        share.bar(
            edges[:-1] + width * (0.5 + offset / 2), drawn.counts / drawn.counts.sum(), width / 2
        )
    curve.set_ylabel("accuracy")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1)
    curve.grid(alpha=0.3)
    curve.legend(loc="upper left")
    curve.set_title(title)
    share.set_xlabel("confidence (probability of the predicted class)")
    share.set_ylabel("share of images")
    share.set_yscale("log")
    figure.tight_layout()
    return figure
