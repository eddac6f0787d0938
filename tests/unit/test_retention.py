"""Retention of the watch's records: old rotated files go, live ones stay, the report reads on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import config
from serving import retention
from serving.settings import Settings
from serving.tools import monitor
from serving.watch import STATISTICS

CLASSES = ("a", "b", "c")
NOW = time.time()
DAY = retention.DAY_S


def _rows(count: int, label: int) -> str:
    row = {"model_name": "m", "model_version": "1", "label": label, "confidence": 0.9}
    row |= {name: 0.5 for name in STATISTICS} | {"timestamp": "2026-11-20T10:00:00"}
    return "".join(json.dumps(row) + "\n" for _ in range(count))


def _records(folder: Path, files: dict[str, tuple[float, int, int]]) -> Path:
    """Record files under `folder`/predictions/data: name -> (age in days, rows, label)."""
    data = folder / "predictions" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, (age_days, rows, label) in files.items():
        path = data / name
        path.write_text(_rows(rows, label))
        os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    return folder


def _names(folder: Path) -> set[str]:
    return {path.name for path in (folder / "predictions" / "data").iterdir()}


def test_files_past_the_days_go_and_live_files_stay(tmp_path: Path) -> None:
    folder = _records(
        tmp_path,
        {
            # A live file quiet for long (a worker that answers nothing) is still being written.
            "data.0.log": (45, 3, 0),
            "data.0.log.2026-10-20": (40, 3, 1),
            "data.1.log.2026-10-31": (31, 3, 1),
            "data.1.log.2026-11-25": (5, 3, 2),
            "data.1.log": (0, 3, 2),
        },
    )
    removed = retention.prune(folder, retention.Retention(days=30), now=NOW)
    assert {path.name for path in removed} == {"data.0.log.2026-10-20", "data.1.log.2026-10-31"}
    assert _names(folder) == {"data.0.log", "data.1.log.2026-11-25", "data.1.log"}


def test_the_oldest_rotated_files_go_until_the_total_fits(tmp_path: Path) -> None:
    folder = _records(
        tmp_path,
        {
            "data.0.log.2026-11-01": (3, 10, 0),
            "data.0.log.2026-11-02": (2, 10, 0),
            "data.0.log.2026-11-03": (1, 10, 0),
            "data.0.log": (0, 10, 0),
        },
    )
    size = (folder / "predictions/data/data.0.log").stat().st_size
    retention.prune(folder, retention.Retention(max_bytes=int(2.5 * size)), now=NOW)
    assert _names(folder) == {"data.0.log.2026-11-03", "data.0.log"}
    # No limit: nothing goes, however old.
    assert retention.prune(folder, retention.Retention(), now=NOW + 1000 * DAY) == []


def test_the_drift_report_reads_what_is_kept(tmp_path: Path) -> None:
    folder = _records(
        tmp_path,
        {
            "data.0.log.2026-09-01": (90, 400, 0),  # removed: 90 days old
            "data.0.log.2026-11-28": (2, 150, 1),
            "data.0.log": (0, 150, 2),
        },
    )
    retention.prune(folder, retention.Retention(days=30), now=NOW)
    served = monitor.read_log(folder, model_name="m", model_version="1", classes=len(CLASSES))
    assert served.files == 2 and len(served.predictions) == 300
    assert np.bincount(served.predictions.labels, minlength=3).tolist() == [0, 150, 150]
    rng = np.random.default_rng(0)
    reference = monitor.Predictions(
        labels=rng.integers(0, 3, 1000),
        confidence=np.full(1000, 0.9),
        statistics={name: np.full(1000, 0.5) + rng.normal(0, 1e-3, 1000) for name in STATISTICS},
    )
    result = monitor.report(
        served, reference, class_names=CLASSES, model="m v1", config=config.MonitorConfig()
    )
    assert result["predictions"] == 300 and result["log_files"] == 2
    assert result["drift"] is True and result["checks"]["class_mix"]["drift"]


def test_a_worker_prunes_at_most_every_so_often(tmp_path: Path) -> None:
    folder = _records(tmp_path, {"data.0.log.2026-10-01": (60, 1, 0)})
    pruner = retention.Pruner(folder, retention.Retention(days=30), every_s=3600)
    pruner.maybe_prune()
    assert _names(folder) == set()
    _records(tmp_path, {"data.0.log.2026-10-02": (59, 1, 0)})
    pruner.maybe_prune()  # within the hour: not yet
    assert _names(folder) == {"data.0.log.2026-10-02"}
    pruner.last = time.monotonic() - 3601
    pruner.maybe_prune()
    assert _names(folder) == set()


def test_retention_settings() -> None:
    assert (Settings().monitor_keep_days, Settings().monitor_keep_bytes) == (30, 0)
    kept = Settings.from_env({"MONITOR_KEEP_DAYS": "0", "MONITOR_KEEP_BYTES": "1000000"})
    assert (kept.monitor_keep_days, kept.monitor_keep_bytes) == (0, 1_000_000)
    with pytest.raises(ValueError, match="MONITOR_KEEP_DAYS must be a positive integer"):
        Settings.from_env({"MONITOR_KEEP_DAYS": "-1"})
