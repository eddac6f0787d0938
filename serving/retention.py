"""Retention of the watch's records: rotated daily files past an age or a total size are removed.

BentoML's default monitor writes `<MONITOR_DIR>/predictions/data/data.<worker>.log` and rolls it
over once a day to `data.<worker>.log.<date>`, deleting nothing. Each worker prunes the folder
when it starts and then at most every PRUNE_EVERY_S seconds while it records: rotated files
last written more than MONITOR_KEEP_DAYS days ago go, then the oldest rotated files until the
folder holds at most MONITOR_KEEP_BYTES. Files being written (no date suffix) are never removed.
The drift report (`serving.tools.monitor`) reads a recent window of what is kept (the last day
by default), and opens no file last written before that window.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bentoml.serving")

DAY_S = 24 * 3600
PRUNE_EVERY_S = 600.0


@dataclass(frozen=True)
class Retention:
    """How much of the records to keep: `days` (0: any age), `max_bytes` (0: any size)."""

    days: int = 0
    max_bytes: int = 0

    @property
    def unlimited(self) -> bool:
        return self.days == 0 and self.max_bytes == 0


def rotated(path: Path) -> bool:
    """Whether `path` is a rolled-over record file (data.0.log.2026-11-20), not a live one."""
    return not path.name.endswith(".log")


def prune(folder: Path, retention: Retention, *, now: float | None = None) -> list[Path]:
    """Remove the rotated record files under `folder` that `retention` does not keep; return
    them. Several workers may prune at once: a file another removed first is skipped."""
    if retention.unlimited or not folder.is_dir():
        return []
    now = time.time() if now is None else now
    files = []
    for path in folder.rglob("data.*.log*"):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            files.append((stat.st_mtime, stat.st_size, path))
    files.sort()  # oldest first
    removed: list[Path] = []
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        too_old = retention.days > 0 and now - mtime > retention.days * DAY_S
        too_much = retention.max_bytes > 0 and total > retention.max_bytes
        if not rotated(path) or not (too_old or too_much):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
        total -= size
    if retention.max_bytes and total > retention.max_bytes:
        log.warning(
            "the watch's live record files alone hold %d bytes, over MONITOR_KEEP_BYTES=%d;"
            " they are kept until they roll over",
            total,
            retention.max_bytes,
        )
    if removed:
        log.info("removed %d old record file(s) of the watch under %s", len(removed), folder)
    return removed


@dataclass
class Pruner:
    """Prunes `folder` now and then (at most every `every_s` seconds) from a worker."""

    folder: Path
    retention: Retention
    every_s: float = PRUNE_EVERY_S
    last: float | None = None

    def maybe_prune(self) -> None:
        """Prune unless it was done less than `every_s` ago; a failure is logged, not raised."""
        clock = time.monotonic()
        if self.last is not None and clock - self.last < self.every_s:
            return
        self.last = clock
        try:
            prune(self.folder, self.retention)
        except OSError:
            log.exception("could not prune the watch's records under %s", self.folder)
