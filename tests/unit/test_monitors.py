"""Two monitors in one process write to their own files, and rows in bulk are written in
blocks, in order, at the latest when the process exits (serving.monitors)."""

from __future__ import annotations

import contextvars
import json
import logging
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from bentoml._internal.context import trace_context

from serving.monitors import FileMonitor


def write(monitor: FileMonitor, value: int) -> None:
    monitor.start_record()
    monitor.log(value, "value", "feature", "numerical")
    monitor.stop_record()


def test_each_monitor_keeps_its_own_rows(tmp_path) -> None:
    predictions = FileMonitor("predictions", log_path=str(tmp_path))
    shadow = FileMonitor("shadow", log_path=str(tmp_path))
    # Interleaved, as a worker's watch and shadow write: BentoML's own monitor sent all of them
    # to whichever folder started second.
    for value in range(3):
        write(predictions, value)
        write(shadow, 10 + value)
    for name, expected in (("predictions", [0, 1, 2]), ("shadow", [10, 11, 12])):
        lines = (tmp_path / name / "data" / "data.0.log").read_text().splitlines()
        assert [json.loads(line)["value"] for line in lines] == expected
        schema = (tmp_path / name / "schema" / "schema.0.log").read_text().splitlines()
        assert len(schema) == 1 and json.loads(schema[0])["columns"][0]["name"] == "value"


class Blocks(logging.Handler):
    """Counts the logging records (blocks of lines) that reach a monitor's data file."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def data_rows(folder: Path, name: str = "predictions") -> list[dict]:
    path = folder / name / "data" / "data.0.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_rows_in_bulk_are_written_as_one_block_in_order_with_the_request_ids(tmp_path) -> None:
    monitor = FileMonitor("predictions", log_path=str(tmp_path), flush_s=600)
    write(monitor, -1)  # the first record, through BentoML's API: the schema and one row
    blocks = Blocks()
    monitor.data_logger.addHandler(blocks)

    def requests() -> None:
        trace_context.request_id = 1234
        for value in range(0, 300, 3):
            monitor.add_rows({"value": [value, value + 1, value + 2]})

    contextvars.copy_context().run(requests)
    assert len(data_rows(tmp_path)) == 1  # the rest wait for the writer's turn
    monitor.flush()
    rows = data_rows(tmp_path)
    assert blocks.count == 1
    assert [row["value"] for row in rows] == list(range(-1, 300))
    # The same columns as BentoML's own rows, in the same order.
    assert list(rows[1]) == list(rows[0]) == ["value", "timestamp", "request_id", "trace_id"]
    assert {row["request_id"] for row in rows[1:]} == {"1234"}
    assert all(datetime.fromisoformat(row["timestamp"]) for row in rows)


def test_the_writer_writes_pending_rows_within_its_interval(tmp_path) -> None:
    monitor = FileMonitor("predictions", log_path=str(tmp_path), flush_s=0.1)
    write(monitor, -1)
    monitor.add_rows({"value": [1, 2]})
    deadline = time.monotonic() + 10
    while len(data_rows(tmp_path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row["value"] for row in data_rows(tmp_path)] == [-1, 1, 2]
    assert any(thread.name == "records-predictions" for thread in threading.enumerate())


def test_pending_rows_are_written_when_the_process_exits(tmp_path) -> None:
    script = (
        "import sys\n"
        "from serving.monitors import FileMonitor\n"
        "monitor = FileMonitor('predictions', log_path=sys.argv[1], flush_s=600)\n"
        "monitor.add_rows({'value': list(range(5))})\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    assert [row["value"] for row in data_rows(tmp_path)] == [0, 1, 2, 3, 4]


class Squares:
    """A `make` for `add_later` that counts its calls: item n gives the rows n*n and -n*n."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> dict[str, list[int]]:
        self.calls.append(items)
        if any(item < 0 for item in items):
            raise ValueError("no rows for a negative item")
        return {"value": [row for item in items for row in (item * item, -item * item)]}


def test_rows_made_later_are_made_once_per_run_in_order_with_each_request_s_id(tmp_path) -> None:
    monitor = FileMonitor("predictions", log_path=str(tmp_path), flush_s=600)
    write(monitor, -1)
    squares = Squares()

    def request(request_id: int, item: int) -> None:
        trace_context.request_id = request_id
        monitor.add_later(squares, item, 2)

    for item in (1, 2, 3):
        contextvars.copy_context().run(request, 100 + item, item)
    monitor.add_rows({"value": [7]})  # another kind of entry ends the run
    for item in (4, 5):
        contextvars.copy_context().run(request, 100 + item, item)
    assert squares.calls == []  # nothing is made on the request's path
    monitor.flush()
    assert squares.calls == [[1, 2, 3], [4, 5]]
    rows = data_rows(tmp_path)
    assert [row["value"] for row in rows] == [-1, 1, -1, 4, -4, 9, -9, 7, 16, -16, 25, -25]
    ids = [row["request_id"] for row in rows[1:7]] + [row["request_id"] for row in rows[8:]]
    assert ids == ["101", "101", "102", "102", "103", "103", "104", "104", "105", "105"]


def test_an_item_whose_rows_cannot_be_made_loses_only_its_own(tmp_path, caplog) -> None:
    monitor = FileMonitor("predictions", log_path=str(tmp_path), flush_s=600)
    write(monitor, -1)
    squares = Squares()
    for item in (1, -2, 3):
        monitor.add_later(squares, item, 2)
    with caplog.at_level(logging.ERROR, logger="bentoml.serving"):
        monitor.flush()
    assert [row["value"] for row in data_rows(tmp_path)] == [-1, 1, -1, 9, -9]
    assert "could not make 2 predictions record(s)" in caplog.text
