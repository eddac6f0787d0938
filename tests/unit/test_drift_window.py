"""The drift report judges a recent window of the watch's records and says which: record files
last written before it are left unread; `--since` and `--all` widen it. Record files are made
here, with their rows' times and the files' modification times as a serving worker leaves them."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from serving.tools import monitor
from serving.watch import STATISTICS

CLASSES = ("a", "b", "c", "d")
NOW = datetime.now()


@pytest.fixture(autouse=True)
def now() -> None:
    """NOW as each test starts: the report's window is measured from the real clock, and a long
    session runs a test many minutes after this module was imported."""
    global NOW
    NOW = datetime.now()


def rows(count: int, *, hours_ago: float, model: str = "m", version: str = "1") -> list[str]:
    when = (NOW - timedelta(hours=hours_ago)).isoformat()
    row = {"model_name": model, "model_version": version, "label": 2, "confidence": 0.8}
    row |= {name: 0.25 for name in STATISTICS} | {"timestamp": when, "endpoint": "predict"}
    return [json.dumps(row)] * count


def record_file(folder: Path, name: str, lines: list[str], *, written_hours_ago: float) -> None:
    path = folder / "predictions" / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    written = (NOW - timedelta(hours=written_hours_ago)).timestamp()
    os.utime(path, (written, written))


@pytest.fixture
def records(tmp_path: Path) -> Path:
    """A worker's file rotated three days ago (120 rows and a broken line), its live file (30
    rows from yesterday, 100 from the last hour) and a second worker's live file (50 rows from
    two hours ago, 7 of another version)."""
    folder = tmp_path / "monitoring"
    old = [*rows(120, hours_ago=80), "not json"]
    record_file(folder, "data.0.log.2026-11-17", old, written_hours_ago=72)
    live = rows(30, hours_ago=30) + rows(100, hours_ago=1)
    record_file(folder, "data.0.log", live, written_hours_ago=0.5)
    other = rows(50, hours_ago=2) + rows(7, hours_ago=2, version="2")
    record_file(folder, "data.1.log", other, written_hours_ago=2)
    return folder


def read(folder: Path, since: datetime | None):
    return monitor.read_log(folder, model_name="m", model_version="1", classes=4, since=since)


def test_files_last_written_before_the_window_are_not_read(records: Path) -> None:
    recent = read(records, NOW - timedelta(hours=24))
    assert len(recent.predictions) == 150 and recent.other_models == {"m v2": 7}
    # The rotated file's broken line would count as unreadable had the file been opened.
    assert (recent.files, recent.skipped_files, recent.unreadable) == (2, 1, 0)
    everything = read(records, None)
    assert len(everything.predictions) == 300
    assert (everything.files, everything.skipped_files, everything.unreadable) == (3, 0, 1)


def test_the_default_window_is_a_day_or_since_the_model_took_over() -> None:
    day = monitor.default_window(NOW, None, "m:v1")
    assert day == monitor.Window(NOW - timedelta(hours=24), "the last 24 h")
    recent = NOW - timedelta(hours=3)
    assert monitor.default_window(NOW, recent, "m:v1") == monitor.Window(
        recent, "when m:v1 took over"
    )
    assert monitor.default_window(NOW, NOW - timedelta(days=9), "m:v1") == day


def test_took_over_is_when_the_pointer_file_last_named_the_model(tmp_path: Path) -> None:
    pointer = tmp_path / "serving-tag"
    assert monitor.took_over("m:v1", pointer) is None
    pointer.write_text("m:v1\n")
    written = (NOW - timedelta(hours=3)).timestamp()
    os.utime(pointer, (written, written))
    assert monitor.took_over("m:v1", pointer) == datetime.fromtimestamp(written)
    assert monitor.took_over("m:v2", pointer) is None


@pytest.mark.parametrize(("text", "hours"), [("90m", 1.5), ("12h", 12), ("7d", 168), ("0.5d", 12)])
def test_since_takes_a_duration_back_from_now(text: str, hours: float) -> None:
    ago = datetime.now() - monitor.since_argument(text)
    assert abs(ago - timedelta(hours=hours)) < timedelta(seconds=5)


def test_since_takes_an_iso_time_and_refuses_anything_else(capsys) -> None:
    assert monitor.since_argument("2026-11-20T08:00") == datetime(2026, 11, 20, 8)
    for wrong in (["--since", "last week"], ["--since", "7d", "--all"]):
        with pytest.raises(SystemExit):
            monitor.parse_args(["--log", "x", *wrong])
    error = capsys.readouterr().err
    assert "'last week' is neither an ISO time (2026-11-20T08:00) nor a duration" in error
    assert "--all: not allowed with argument --since" in error


class Uniform:
    """Stands in for the served model: only the reference's predictions come from it."""

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), len(CLASSES)), 1 / len(CLASSES))


def report(tmp_path: Path, capsys, *flags: str) -> tuple[list[str], dict]:
    """`python -m serving.tools.monitor` in `tmp_path` (where `make serve` would leave its
    pointer file), as a user runs it: its printed lines and drift.json."""
    test_data = tmp_path / "test.npz"
    np.savez(test_data, x=np.zeros((8, 28, 28), np.float32))
    params = tmp_path / "params.yaml"
    params.write_text("monitor:\n  min_predictions: 1000\n")  # a count, not a verdict, is tested
    out = tmp_path / "report"
    arguments = ["--log", "monitoring", "--out", str(out), "--model", "m:v1", *flags]
    arguments += ["--test-data", str(test_data), "--params", str(params)]
    assert monitor.main(arguments) == 0
    return capsys.readouterr().out.splitlines(), json.loads((out / "drift.json").read_text())


@pytest.fixture
def command_line(records: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command runs in the records' parent folder, with a stand-in for the BentoML store."""
    monkeypatch.chdir(records.parent)
    served = monitor.ServedModelFile("m", "1", CLASSES, Uniform())
    monkeypatch.setattr(monitor.ServedModelFile, "load", classmethod(lambda cls, tag: served))


@pytest.mark.usefixtures("command_line")
def test_the_report_judges_the_last_day_by_default_and_says_so(tmp_path: Path, capsys) -> None:
    lines, result = report(tmp_path, capsys)
    assert lines[0].startswith("not enough data: 150 predictions of m v1")
    assert lines[1].startswith("judged the records from ")
    assert lines[1].endswith(
        " (the last 24 h): 2 record file(s) read, 1 last written before it left unread;"
        " --since 7d or --all widens it"
    )
    assert result["predictions"] == 150 and result["window"]["reason"] == "the last 24 h"
    since = datetime.fromisoformat(result["window"]["since"])
    assert abs(since - (NOW - timedelta(hours=24))) < timedelta(minutes=1)
    assert (result["log_files"], result["skipped_files"]) == (2, 1)


@pytest.mark.usefixtures("command_line")
def test_a_model_that_took_over_later_is_judged_since_then(tmp_path: Path, capsys) -> None:
    pointer = tmp_path / ".bentoml" / "serving-tag"
    pointer.parent.mkdir()
    pointer.write_text("m:v1\n")
    written = (NOW - timedelta(hours=1.5)).timestamp()
    os.utime(pointer, (written, written))
    lines, result = report(tmp_path, capsys)
    # The second worker's rows from two hours ago are older than the model's turn.
    assert result["predictions"] == 100 and result["window"]["reason"] == "when m:v1 took over"
    assert "(when m:v1 took over): 1 record file(s) read, 2 last written" in lines[1]


@pytest.mark.parametrize(
    ("flags", "judged", "unread"),
    [(["--since", "31h"], 180, 1), (["--since", "4d"], 300, 0), (["--all"], 300, 0)],
)
@pytest.mark.usefixtures("command_line")
def test_a_flag_widens_the_window(tmp_path: Path, capsys, flags, judged: int, unread: int) -> None:
    lines, result = report(tmp_path, capsys, *flags)
    assert result["predictions"] == judged and result["skipped_files"] == unread
    assert lines[0].startswith(f"not enough data: {judged} predictions of m v1")
    if flags == ["--all"]:
        assert result["window"] == {
            "since": None,
            "reason": "every record kept (--all)",
            "description": "every record kept (--all)",
        }
        assert lines[1] == "judged every record kept (--all): 3 record file(s) read, 0 last" + (
            " written before it left unread"
        )
    else:
        assert result["window"]["reason"] == "--since" and "(--since): " in lines[1]
