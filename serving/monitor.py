"""The drift report: what the service answered, compared with the served model on the test split.

    python -m serving.monitor --log monitoring --out reports/monitor

reads the watch's JSON lines (`serving.watch`, every `data.*.log*` file under `--log`), keeps the
rows of the model it is given (`--model`, a BentoML tag), and compares them with a reference: that
model's own predictions and input statistics on the test split (`--test-data`, the `prepare`
stage's test.npz). Each check of params.yaml's `monitor:` section (class mix, confidence, each
input statistic) runs its named test against its threshold. It writes `drift.json` and
`drift.png` (the distributions) to `--out` and says in one line what drifted. With fewer than
`monitor.min_predictions` rows the answer is "not enough data", and no verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.watch import STATISTICS, input_statistics

# The reference is computed in batches of this many test images.
REFERENCE_BATCH = 1024
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


def log_files(folder: Path) -> list[Path]:
    """The watch's data files under `folder`, rotated ones included (data.0.log.2026-11-20)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder; pass the service's MONITOR_DIR (default: monitoring)"
        )
    return sorted(path for path in folder.rglob("data.*.log*") if path.is_file())


def read_log(
    folder: Path,
    *,
    model_name: str,
    model_version: str,
    classes: int,
    since: datetime | None = None,
) -> ServedLog:
    """The predictions `model_name` version `model_version` answered (at or after `since` when
    given), from every log file. A row that is not JSON, lacks a field, or holds an impossible
    value (a class outside 0..classes-1, NaN or infinity) counts as unreadable."""
    wanted = f"{model_name} v{model_version}"
    since = None if since is None else _local(since)
    labels, confidence, statistics = [], [], {name: [] for name in STATISTICS}
    other_models: dict[str, int] = {}
    unreadable = 0
    files = log_files(folder)
    for path in files:
        with path.open(errors="replace") as lines:  # line by line: sampled pixels make big rows
            for line in lines:
                try:
                    row = json.loads(line)
                    when = datetime.fromisoformat(row["timestamp"])
                    if since is not None and _local(when) < since:
                        continue
                    model = f"{row['model_name']} v{row['model_version']}"
                    if model == wanted:
                        label, certainty, values = _served_row(row, classes)
                except (ValueError, KeyError, TypeError):
                    unreadable += bool(line.strip())
                    continue
                if model != wanted:
                    other_models[model] = other_models.get(model, 0) + 1
                    continue
                labels.append(label)
                confidence.append(certainty)
                for name, value in zip(STATISTICS, values, strict=True):
                    statistics[name].append(value)
    predictions = Predictions(
        labels=np.array(labels, dtype=np.int64),
        confidence=np.array(confidence, dtype=np.float64),
        statistics={
            name: np.array(values, dtype=np.float64) for name, values in statistics.items()
        },
    )
    return ServedLog(predictions, len(files), other_models, unreadable)


def _served_row(row: dict[str, Any], classes: int) -> tuple[int, float, list[float]]:
    """A row's class, confidence and input statistics; ValueError for an impossible value (a
    NaN would make every test's p-value NaN, and NaN < threshold is never drift)."""
    values = [float(row[name]) for name in STATISTICS]
    label, certainty = int(row["label"]), float(row["confidence"])
    if not 0 <= label < classes:
        raise ValueError(f"class {label} is not one of the model's {classes}")
    if not np.isfinite([certainty, *values]).all():
        raise ValueError("a value is NaN or infinite")
    return label, certainty, values


def _local(moment: datetime) -> datetime:
    """`moment` in this machine's local time without a zone, as the log writes its times (a
    time with a zone, from --since or a shipped row, would not compare with those)."""
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo is not None else moment


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
) -> dict[str, Any]:
    """drift.json's content (`config` is a `pipeline.config.MonitorConfig`)."""
    count = len(served.predictions)
    base: dict[str, Any] = {
        "model": model,
        "predictions": count,
        "reference_images": len(reference),
        "log_files": served.files,
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


@dataclass(frozen=True)
class ServedModelFile:
    """What the report needs of a model in the BentoML store."""

    name: str
    version: str
    class_names: tuple[str, ...]
    model: Any

    @classmethod
    def load(cls, tag: str) -> ServedModelFile:
        import bentoml

        from serving.model import ServedModel, served_file

        stored = bentoml.models.get(tag)
        info = dict(stored.info.metadata)
        served = ServedModel.load(
            Path(stored.path_of(served_file(info))),
            info=info,
            version=str(stored.tag.version),
            threads=os.cpu_count() or 1,
        )
        return cls(served.name, served.version, served.class_names, served)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                self.model.probabilities(images[start : start + REFERENCE_BATCH])
                for start in range(0, len(images), REFERENCE_BATCH)
            ]
        )


def load_test_images(path: Path) -> np.ndarray:
    """The test split's images, float32 (N, 28, 28) in [0, 1], from the `prepare` stage's npz."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the reference is the test split `dvc repro` prepares; run"
            " `make repro` or pass --test-data"
        )
    with np.load(path) as data:
        images = np.asarray(data["x"], dtype=np.float32)
    return images.reshape(-1, 28, 28)


def run(
    *,
    log: Path,
    out: Path,
    model: ServedModelFile,
    test_images: np.ndarray,
    config: Any,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Read the log, compare, write drift.json (and drift.png when there is a verdict)."""
    from pipeline import io

    served = read_log(
        log,
        model_name=model.name,
        model_version=model.version,
        classes=len(model.class_names),
        since=since,
    )
    reference = reference_predictions(model.probabilities(test_images), test_images)
    label = f"{model.name} v{model.version}"
    result = report(served, reference, class_names=model.class_names, model=label, config=config)
    out.mkdir(parents=True, exist_ok=True)
    picture = out / "drift.png"
    if result["drift"] is None:
        picture.unlink(missing_ok=True)  # an older picture would contradict drift.json
    else:
        io.save_figure(
            picture,
            plot(served.predictions, reference, result, class_names=model.class_names),
        )
    io.write_json(out / "drift.json", result)
    return result


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.monitor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--log", type=Path, required=True, help="the service's MONITOR_DIR")
    parser.add_argument("--out", type=Path, default=Path("reports/monitor"), help="report folder")
    parser.add_argument(
        "--model",
        default=os.environ.get("BENTO_MODEL") or _served_tag(),
        help="BentoML tag of the served model (default: $BENTO_MODEL, else what `make serve`"
        " last served, from .bentoml/serving-tag)",
    )
    parser.add_argument("--test-data", type=Path, default=Path("data/prepared/test.npz"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        help="only predictions at or after this ISO time (the server's local time unless it"
        " names a zone), e.g. 2026-11-20T08:00 or 2026-11-20T07:00Z",
    )
    return parser.parse_args(list(argv) if argv is not None else None)


def _served_tag() -> str | None:
    path = Path(".bentoml/serving-tag")
    return path.read_text().strip() if path.is_file() else None


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline import config

    if not args.model:
        print("no model to compare with: pass --model TAG or set BENTO_MODEL", file=sys.stderr)
        return 2
    # `make serve` keeps its BentoML store in .bentoml; look there too unless told otherwise.
    if Path(".bentoml/models").is_dir():
        os.environ.setdefault("BENTOML_HOME", str(Path(".bentoml").resolve()))
    from bentoml.exceptions import NotFound

    try:
        monitor = config.load(args.params).monitor
        test_images = load_test_images(args.test_data)
        model = ServedModelFile.load(args.model)
        result = run(
            log=args.log,
            out=args.out,
            model=model,
            test_images=test_images,
            config=monitor,
            since=args.since,
        )
    except (FileNotFoundError, ValueError, NotFound) as error:
        print(f"serving.monitor: {error}", file=sys.stderr)
        return 2
    print(result["summary"])
    print(
        f"wrote {args.out / 'drift.json'}"
        + ("" if result["drift"] is None else f" and {args.out / 'drift.png'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
