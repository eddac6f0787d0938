"""The drift report from the command line: read what the service answered, compare it with the
served model on the test split (the comparison itself is serving/tools/drift.py).

    python -m serving.tools.monitor --log monitoring --out reports/monitor

reads the watch's JSON lines (`serving.watch`, the `data.*.log*` files under `--log`) of a recent
window, keeps the rows of the model it is given (`--model`, a BentoML tag), and compares them with a
reference: that model's own predictions and input statistics on the test split (`--test-data`, the
`prepare` stage's test.npz). Each check of params.yaml's `monitor:` section (class mix, confidence,
each input statistic) runs its named test against its threshold. It writes `drift.json` and
`drift.png` (the distributions) to `--out` and says in one line what drifted, and in the next which
window it judged. With fewer than `monitor.min_predictions` rows the answer is "not enough data",
and no verdict.

The window (`Window`): by default the last 24 hours, or less when the model took over later
(`make serve`'s pointer file, .bentoml/serving-tag, names it and was last written then);
`--since` moves its start (an ISO time, or a duration back from now: 90m, 12h, 7d) and `--all`
reads every record kept. A record file last written before the window starts holds no row in it
and is not opened: the kept records of a service that has run for weeks are mostly such files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from serving.shadow import MONITOR_NAME as SHADOW_NAME
from serving.tools.drift import Predictions, ServedLog, plot, reference_predictions, report
from serving.watch import STATISTICS

# The reference is computed in batches of this many test images.
REFERENCE_BATCH = 1024
# The default window: a day of answers is enough for every check, and reading more costs.
DEFAULT_WINDOW = timedelta(hours=24)
# `make serve` points the service at a model here; it is rewritten only when the model changes.
SERVING_TAG_FILE = Path(".bentoml/serving-tag")
DURATION = re.compile(r"(\d+(?:\.\d+)?)([mhd])")
DURATION_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


@dataclass(frozen=True)
class Window:
    """Which records the report judges: those at or after `since` (None: every one kept), and
    in a few words why (`the last 24 h`)."""

    since: datetime | None
    reason: str

    def describe(self) -> str:
        if self.since is None:
            return self.reason
        return (
            f"the records from {self.since.isoformat(sep=' ', timespec='seconds')} ({self.reason})"
        )

    def as_json(self) -> dict[str, str | None]:
        since = None if self.since is None else self.since.isoformat(timespec="seconds")
        return {"since": since, "reason": self.reason, "description": self.describe()}


EVERYTHING = Window(None, "every record kept (--all)")


def default_window(now: datetime, took_over: datetime | None, tag: str | None) -> Window:
    """The last 24 hours before `now`, or from `took_over` when model `tag` took over later."""
    start = now - DEFAULT_WINDOW
    if took_over is not None and took_over > start:
        return Window(took_over, f"when {tag} took over")
    return Window(start, "the last 24 h")


def took_over(tag: str | None, pointer: Path = SERVING_TAG_FILE) -> datetime | None:
    """When the pointer file was last written, if it names `tag`: when the service was pointed
    at that model. None where there is no such file or it names another model."""
    try:
        if tag is None or pointer.read_text().strip() != tag:
            return None
        return datetime.fromtimestamp(pointer.stat().st_mtime)
    except OSError:
        return None


def since_argument(text: str) -> datetime:
    """--since: an ISO time (2026-11-20T08:00, 2026-11-20T07:00Z) or a duration back from now
    (90m, 12h, 7d)."""
    duration = DURATION.fullmatch(text.strip())
    if duration:
        return datetime.now() - float(duration[1]) * DURATION_UNITS[duration[2]]
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time (2026-11-20T08:00) nor a duration (90m, 12h, 7d)"
        ) from None


def log_files(folder: Path, since: datetime | None = None) -> tuple[list[Path], int]:
    """The watch's data files under `folder`, rotated ones included (data.0.log.2026-11-20),
    less those last written before `since` (none of their rows can be at or after it); and
    how many were left out so."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder; pass the service's MONITOR_DIR (default: monitoring)"
        )
    files = sorted(
        path
        for path in folder.rglob("data.*.log*")
        # The shadow's records (serving.shadow) are another table: `serving.tools.shadow`.
        if path.is_file() and SHADOW_NAME not in path.relative_to(folder).parts
    )
    if since is None:
        return files, 0
    start = _local(since).timestamp()
    recent = [path for path in files if path.stat().st_mtime >= start]
    return recent, len(files) - len(recent)


def read_log(
    folder: Path,
    *,
    model_name: str,
    model_version: str,
    classes: int,
    since: datetime | None = None,
) -> ServedLog:
    """The predictions `model_name` version `model_version` answered (at or after `since` when
    given), from every log file written since. A row that is not JSON, lacks a field, or holds
    an impossible value (a class outside 0..classes-1, NaN or infinity) counts as unreadable."""
    wanted = f"{model_name} v{model_version}"
    since = None if since is None else _local(since)
    labels, confidence, statistics = [], [], {name: [] for name in STATISTICS}
    other_models: dict[str, int] = {}
    unreadable = 0
    files, skipped = log_files(folder, since)
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
    return ServedLog(predictions, len(files), other_models, unreadable, skipped)


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
    window: Window = EVERYTHING,
) -> dict[str, Any]:
    """Read the window's records, compare, write drift.json (and drift.png when there is a
    verdict)."""
    from pipeline import io

    served = read_log(
        log,
        model_name=model.name,
        model_version=model.version,
        classes=len(model.class_names),
        since=window.since,
    )
    reference = reference_predictions(model.probabilities(test_images), test_images)
    label = f"{model.name} v{model.version}"
    result = report(
        served,
        reference,
        class_names=model.class_names,
        model=label,
        config=config,
        window=window.as_json(),
    )
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
        prog="python -m serving.tools.monitor", description=__doc__.split("\n\n")[0]
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
    widen = parser.add_mutually_exclusive_group()
    widen.add_argument(
        "--since",
        type=since_argument,
        help="judge predictions at or after this ISO time (the server's local time unless it"
        " names a zone: 2026-11-20T08:00, 2026-11-20T07:00Z) or this long ago (90m, 12h, 7d);"
        " default: the last 24 h, or since the model took over if that is later",
    )
    widen.add_argument("--all", action="store_true", help="judge every record kept")
    return parser.parse_args(list(argv) if argv is not None else None)


def window_of(args: argparse.Namespace) -> Window:
    """The window the command line asks for (`--all`, `--since`, else the default)."""
    if args.all:
        return EVERYTHING
    if args.since is not None:
        return Window(args.since, "--since")
    return default_window(datetime.now(), took_over(args.model), args.model)


def window_line(result: dict[str, Any]) -> str:
    """Which records the report judged, and how to judge more."""
    window = result["window"]
    line = (
        f"judged {window['description']}: {result['log_files']} record file(s) read"
        f", {result['skipped_files']} last written before it left unread"
    )
    return line + ("" if window["since"] is None else "; --since 7d or --all widens it")


def _served_tag() -> str | None:
    return SERVING_TAG_FILE.read_text().strip() if SERVING_TAG_FILE.is_file() else None


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
            window=window_of(args),
        )
    except (FileNotFoundError, ValueError, NotFound) as error:
        print(f"serving.tools.monitor: {error}", file=sys.stderr)
        return 2
    print(result["summary"])
    print(window_line(result))
    print(
        f"wrote {args.out / 'drift.json'}"
        + ("" if result["drift"] is None else f" and {args.out / 'drift.png'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
