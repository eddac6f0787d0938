"""Two monitors in one process write to their own files (serving.monitors)."""

from __future__ import annotations

import json

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
