"""BentoML's default monitor, with a logger of its own for each monitor.

BentoML 1.4's `DefaultMonitor` writes every monitor through the same two loggers
(`bentoml_monitor_data`, `bentoml_monitor_schema`) and points them, with `logging.config
.dictConfig`, at the files of whichever monitor wrote first last: with two monitors in a worker
(the watch's `predictions` and the shadow's `shadow`), the rows of both went to one of the two
folders, whichever started second. `FileMonitor` writes the same JSON lines to the same files,
`<log_path>/<name>/data/data.<worker>.log` (rotated daily) and `.../schema/schema.<worker>.log`,
through loggers named after the monitor. The service declares it (`monitoring.type`).

It also takes rows in bulk (`add_rows`, used by serving.records after a monitor's first record):
BentoML's `bentoml.monitor(...)` context, its per-column `log_batch` and one logging call per row
cost ~0.1 ms of a single-image request, ten times the row's own JSON. `add_rows` only keeps the
columns with the request's timestamp and ids (as `export_data` adds them), and `add_later` only
what the columns are made from and the function that makes them: it runs in the writer thread,
once for all the requests pending (`Later`), so numpy's per-call cost is paid once per block
rather than per request. A thread of the monitor's makes the rows and writes what is pending as
one block of lines every `flush_s` (a monitoring option,
default `FLUSH_S`), sooner when `FLUSH_ROWS` are waiting, and at the process's exit; a BentoML
worker ends without running `atexit`, so the service writes them as it stops (its `on_shutdown`
hook, serving.records.flush). A worker killed outright loses at most the last `flush_s` of rows.
"""

from __future__ import annotations

import atexit
import datetime
import itertools
import json
import logging
import logging.handlers
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bentoml._internal.context import server_context, trace_context
from bentoml._internal.monitoring.default import DefaultMonitor

# How often the writer thread writes what rows are pending, and how many wake it sooner.
FLUSH_S = 0.5
FLUSH_ROWS = 2000

Columns = Mapping[str, Sequence[Any]]


class Later(NamedTuple):
    """Rows to be made in the writer thread: `make(items)` gives the columns (one value per row,
    `count` rows per item, in order) of a run of pending entries that share `make`."""

    make: Callable[[list[Any]], Columns]
    item: Any
    count: int
    stamp: dict[str, str]


class FileMonitor(DefaultMonitor):
    """`DefaultMonitor` whose loggers belong to this monitor alone, and which takes rows in
    bulk."""

    def __init__(self, name: str, log_path: str, flush_s: float = FLUSH_S, **options: Any) -> None:
        super().__init__(name, log_path, **options)
        self.flush_s = flush_s
        self._lock = threading.Lock()
        # Held while a block is taken and written, so that blocks reach the file in order.
        self._flushing = threading.Lock()
        self._pending: list[Later] = []
        self._waiting = 0
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None

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

    def add_rows(self, columns: Columns) -> None:
        """Rows (column -> one value per row) to be written by the monitor's thread, stamped
        now with the current request's ids. Call after the monitor's first record, which wrote
        the schema."""
        self.add_later(_joined, columns, len(next(iter(columns.values()))))

    def add_later(self, make: Callable[[list[Any]], Columns], item: Any, count: int) -> None:
        """`count` rows that `make([..., item, ...])` gives in the writer thread, stamped now with
        the current request's ids; `item` must not change after the call."""
        stamp = {
            self.COLUMN_TIME: datetime.datetime.now().isoformat(),
            self.COLUMN_RID: str(trace_context.request_id),
            self.COLUMN_TID: str(trace_context.trace_id),
        }
        with self._lock:
            self._pending.append(Later(make, item, count, stamp))
            self._waiting += count
            waiting = self._waiting
        if self._writer is None:
            self._start_writer()
        if waiting >= FLUSH_ROWS:
            self._wake.set()

    def flush(self) -> None:
        """Write the pending rows now, as one block of JSON lines."""
        with self._flushing:
            with self._lock:
                pending, self._pending, self._waiting = self._pending, [], 0
            if not pending:
                return
            if self.data_logger is None:
                self._init_logger()
            lines = "\n".join(json.dumps(row, default=str) for row in _rows(pending, self.name))
            if lines:
                self.data_logger.info(_Lines(lines))

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is not None:
                return
            self._writer = threading.Thread(
                target=self._write_forever, name=f"records-{self.name}", daemon=True
            )
            self._writer.start()
        atexit.register(self.flush)

    def _write_forever(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                logging.getLogger("bentoml.serving").exception(
                    "could not write the %s records", self.name
                )


def _joined(parts: list[Columns]) -> Columns:
    """Columns given whole (`add_rows`), one after the other."""
    return {name: [value for part in parts for value in part[name]] for name in parts[0]}


def _rows(pending: list[Later], name: str) -> Any:
    """The pending entries' rows in order, each run of entries that share a `make` made at once.
    Where a run's rows cannot be made, each entry's are made alone: one that still fails is
    logged and left out, the others are written."""
    for make, run in itertools.groupby(pending, key=lambda entry: entry.make):
        entries = list(run)
        try:
            yield from _rows_of(make, entries)
        except Exception:
            for entry in entries:
                try:
                    yield from _rows_of(make, [entry])
                except Exception:
                    logging.getLogger("bentoml.serving").exception(
                        "could not make %d %s record(s)", entry.count, name
                    )


def _rows_of(make: Callable[[list[Any]], Columns], entries: list[Later]) -> list[dict[str, Any]]:
    columns = make([entry.item for entry in entries])
    names = list(columns)
    stamps = [entry.stamp for entry in entries for _ in range(entry.count)]
    return [
        dict(zip(names, values, strict=True)) | stamp
        for values, stamp in zip(zip(*columns.values(), strict=True), stamps, strict=True)
    ]


class _Lines(str):
    """JSON lines already made (`FileMonitor.flush`), written as they are."""


class _JsonLines(logging.Formatter):
    """Each record's dict as one JSON line, as BentoML's JSON formatter writes it."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, _Lines):
            return record.msg
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
