"""The drift report: predictions served compared with the model's own on the test split.

Each check of params.yaml's `monitor:` section runs its named test against its threshold: the
class mix by chi-square (or PSI), the confidence and each input statistic by two-sample
Kolmogorov-Smirnov (or PSI). `report` gives drift.json's content, `plot` drift.png's figure;
serving/tools/monitor.py reads the records and writes both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from serving.watch import STATISTICS, input_statistics

# Bins of the population stability index of a continuous quantity (reference deciles).
PSI_BINS = 10
# Added to every share before a PSI or chi-square, so an empty bin or class stays finite.
SMOOTHING = 0.5


@dataclass(frozen=True)
class Predictions:
    """Predictions with what they were made on: one entry per image."""

    labels: np.ndarray
    confidence: np.ndarray
    statistics: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.labels)

    def values(self, name: str) -> np.ndarray:
        return self.confidence if name == "confidence" else self.statistics[name]


@dataclass(frozen=True)
class ServedLog:
    """The rows of the watch's log that belong to one model, and what else the log held."""

    predictions: Predictions
    files: int
    other_models: dict[str, int]
    unreadable: int
    # Files left unread: last written before the window the report judges.
    skipped_files: int = 0


def reference_predictions(probabilities: np.ndarray, images: np.ndarray) -> Predictions:
    """The model's own answers on the test split (float32 (N, 28, 28) images in [0, 1])."""
    return Predictions(
        labels=probabilities.argmax(axis=1),
        confidence=probabilities.max(axis=1).astype(np.float64),
        statistics={
            name: values.astype(np.float64) for name, values in input_statistics(images).items()
        },
    )


def _shares(counts: np.ndarray) -> np.ndarray:
    smoothed = counts.astype(np.float64) + SMOOTHING
    return smoothed / smoothed.sum()


def psi(served_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins."""
    served, reference = _shares(served_counts), _shares(reference_counts)
    return float(np.sum((served - reference) * np.log(served / reference)))


def class_mix_check(
    served: np.ndarray, reference: np.ndarray, *, class_names: Sequence[str], check: Any
) -> dict[str, Any]:
    """Whether the mix of predicted classes moved: chi-square against the reference's shares
    (drift when p < threshold), or PSI over the classes (drift when PSI > threshold)."""
    from scipy import stats

    classes = len(class_names)
    served_counts = np.bincount(served, minlength=classes)[:classes]
    reference_counts = np.bincount(reference, minlength=classes)[:classes]
    result: dict[str, Any] = {"test": check.test, "threshold": check.threshold}
    if check.test == "chi2":
        expected = _shares(reference_counts) * served_counts.sum()
        statistic, p_value = stats.chisquare(served_counts, expected)
        result |= {"statistic": float(statistic), "p_value": float(p_value)}
        result["drift"] = bool(p_value < check.threshold)
    elif check.test == "psi":
        result["statistic"] = psi(served_counts, reference_counts)
        result["drift"] = bool(result["statistic"] > check.threshold)
    else:
        raise ValueError(
            f"monitor.checks.class_mix.test: {check.test!r} needs numbers; use chi2 or psi"
        )
    served_shares = served_counts / max(1, served_counts.sum())
    reference_shares = reference_counts / max(1, reference_counts.sum())
    result["served"] = dict(zip(class_names, np.round(served_shares, 4).tolist(), strict=True))
    result["reference"] = dict(
        zip(class_names, np.round(reference_shares, 4).tolist(), strict=True)
    )
    moved = int(np.argmax(np.abs(served_shares - reference_shares)))
    result["largest_shift"] = (
        f"{class_names[moved]} {reference_shares[moved]:.1%} -> {served_shares[moved]:.1%}"
    )
    return result


def distribution_check(served: np.ndarray, reference: np.ndarray, *, name: str, check: Any):
    """Whether a quantity's distribution moved: two-sample Kolmogorov-Smirnov (drift when
    p < threshold), or PSI over the reference's deciles (drift when PSI > threshold)."""
    from scipy import stats

    result: dict[str, Any] = {"test": check.test, "threshold": check.threshold}
    if check.test == "ks":
        outcome = stats.ks_2samp(served, reference)
        result |= {"statistic": float(outcome.statistic), "p_value": float(outcome.pvalue)}
        result["drift"] = bool(outcome.pvalue < check.threshold)
    elif check.test == "psi":
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
        served_counts = np.bincount(np.searchsorted(edges, served), minlength=len(edges) + 1)
        reference_counts = np.bincount(np.searchsorted(edges, reference), minlength=len(edges) + 1)
        result["statistic"] = psi(served_counts, reference_counts)
        result["drift"] = bool(result["statistic"] > check.threshold)
    else:
        raise ValueError(
            f"monitor.checks.{name}.test: {check.test!r} is for classes; use ks or psi"
        )
    result["served_mean"] = round(float(np.mean(served)), 6)
    result["reference_mean"] = round(float(np.mean(reference)), 6)
    return result


def compare(
    served: Predictions, reference: Predictions, *, class_names: Sequence[str], checks: Any
) -> dict[str, dict[str, Any]]:
    """Every check of `checks` (a `pipeline.config.DriftChecks`), by name."""
    results = {}
    for item in fields(checks):
        check = getattr(checks, item.name)
        if item.name == "class_mix":
            results[item.name] = class_mix_check(
                served.labels, reference.labels, class_names=class_names, check=check
            )
        else:
            results[item.name] = distribution_check(
                served.values(item.name), reference.values(item.name), name=item.name, check=check
            )
    return results


def describe(result: Mapping[str, Any]) -> str:
    """One check's outcome in a few words: `ks p=3e-12 < 0.001`."""
    test, threshold = result["test"], result["threshold"]
    if "p_value" in result:
        sign = "<" if result["drift"] else ">="
        return f"{test} p={result['p_value']:.2g} {sign} {threshold:g}"
    sign = ">" if result["drift"] else "<="
    return f"{test} {result['statistic']:.3g} {sign} {threshold:g}"


def summary(checks: Mapping[str, Mapping[str, Any]], *, predictions: int, model: str) -> str:
    """The verdict in one line, naming what drifted and by which test."""
    drifted = [name for name, result in checks.items() if result["drift"]]
    if not drifted:
        return f"no drift in {predictions} predictions of {model}: every check within its threshold"
    parts = []
    for name in drifted:
        detail = describe(checks[name])
        if name == "class_mix":
            detail += f"; {checks[name]['largest_shift']}"
        else:
            detail += (
                f"; mean {checks[name]['reference_mean']:.3g} -> {checks[name]['served_mean']:.3g}"
            )
        parts.append(f"{name} ({detail})")
    return f"drift in {predictions} predictions of {model}: " + ", ".join(parts)


def report(
    served: ServedLog,
    reference: Predictions,
    *,
    class_names: Sequence[str],
    model: str,
    config: Any,
    window: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """drift.json's content (`config` is a `pipeline.config.MonitorConfig`; `window`, which
    records were read, is passed through)."""
    count = len(served.predictions)
    base: dict[str, Any] = {
        "model": model,
        "predictions": count,
        "window": window,
        "reference_images": len(reference),
        "log_files": served.files,
        "skipped_files": served.skipped_files,
        "other_models": served.other_models,
        "unreadable_lines": served.unreadable,
    }
    if count < config.min_predictions:
        elsewhere = (
            f"; the log also holds {sum(served.other_models.values())} predictions of other"
            f" models ({', '.join(served.other_models)})"
            if served.other_models
            else ""
        )
        message = (
            f"not enough data: {count} predictions of {model}, at least {config.min_predictions}"
            f" needed (monitor.min_predictions) to tell drift from chance{elsewhere}"
        )
        return {
            "drift": None,
            "status": "not enough data",
            **base,
            "summary": message,
            "checks": {},
        }
    checks = compare(served.predictions, reference, class_names=class_names, checks=config.checks)
    drift = any(result["drift"] for result in checks.values())
    return {
        "drift": drift,
        "status": "drift" if drift else "no drift",
        **base,
        "summary": summary(checks, predictions=count, model=model),
        "checks": checks,
    }


def plot(served: Predictions, reference: Predictions, result: Mapping[str, Any], *, class_names):
    """A figure of the class mix, the confidence and each input statistic: served vs reference."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = ["class_mix", "confidence", *STATISTICS]
    figure, axes = pyplot.subplots(2, 3, figsize=(15, 8), layout="constrained")
    for axis, name in zip(axes.ravel(), names, strict=True):
        check = result["checks"][name]
        verdict = "DRIFT" if check["drift"] else "ok"
        axis.set_title(f"{name}: {verdict} ({describe(check)})", fontsize=10)
        if name == "class_mix":
            positions = np.arange(len(class_names))
            axis.bar(positions - 0.2, list(check["reference"].values()), 0.4, label="reference")
            axis.bar(positions + 0.2, list(check["served"].values()), 0.4, label="served")
            axis.set_xticks(positions, class_names, rotation=45, ha="right", fontsize=8)
            axis.set_ylabel("share of predictions")
        else:
            both = np.concatenate([served.values(name), reference.values(name)])
            bins = np.histogram_bin_edges(both, bins=30)
            axis.hist(reference.values(name), bins, density=True, alpha=0.5, label="reference")
            axis.hist(served.values(name), bins, density=True, alpha=0.5, label="served")
            axis.set_ylabel("density")
        axis.legend(fontsize=8)
    figure.suptitle(result["summary"], fontsize=10)
    return figure
