"""BentoML's default monitor, with a logger of its own for each monitor.

BentoML 1.4's `DefaultMonitor` writes every monitor through the same two loggers
(`bentoml_monitor_data`, `bentoml_monitor_schema`) and points them, with `logging.config
.dictConfig`, at the files of whichever monitor wrote first last: with two monitors in a worker
(the watch's `predictions` and the shadow's `shadow`), the rows of both went to one of the two
folders, whichever started second. `FileMonitor` writes the same JSON lines to the same files,
`<log_path>/<name>/data/data.<worker>.log` (rotated daily) and `.../schema/schema.<worker>.log`,
through loggers named after the monitor. The service declares it (`monitoring.type`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

from bentoml._internal.context import server_context
from bentoml._internal.monitoring.default import DefaultMonitor


class FileMonitor(DefaultMonitor):
    """`DefaultMonitor` whose loggers belong to this monitor alone."""

    def _init_logger(self) -> None:
        worker = server_context.worker_index or 0
        folder = Path(self.log_path, self.name).absolute()
        data = folder / "data" / f"data.{worker}.log"
        schema = folder / "schema" / f"schema.{worker}.log"
        self.data_logger = _logger(
            f"bentoml_monitor_data.{self.name}",
            logging.handlers.TimedRotatingFileHandler(_made(data), when="D"),
        )
        self.schema_logger = _logger(
            f"bentoml_monitor_schema.{self.name}",
            logging.handlers.RotatingFileHandler(_made(schema)),
        )


class _JsonLines(logging.Formatter):
    """Each record's dict as one JSON line, as BentoML's JSON formatter writes it."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, default=str)


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger that writes each record's dict as one JSON line to `handler` only."""
    handler.setFormatter(_JsonLines())
    found = logging.getLogger(name)
    found.handlers[:] = [handler]
    found.setLevel(logging.INFO)
    found.propagate = False
    return found
