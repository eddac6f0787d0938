"""Rows to BentoML's monitoring API (`bentoml.monitor`): the watch's and the shadow's records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The monitors whose columns this process has written once (see `log_columns`).
_SCHEMA_WRITTEN: set[str] = set()


def log_columns(name: str, columns: Mapping[str, tuple[list[Any], str, str]]) -> None:
    """Rows to the BentoML monitor `name`: column -> (values, role, kind), one value per row.
    A monitor's first record in a process also writes its schema, and BentoML then warns once
    per value after a column's first ("Column name ... is duplicated"): that first record is
    written one row alone, the rest after it."""
    import bentoml

    count = len(next(iter(columns.values()))[0])
    first = 1 if name not in _SCHEMA_WRITTEN and count > 1 else count
    for part in (slice(0, first), slice(first, None)):
        if part.start == count:
            break
        with bentoml.monitor(name) as monitor:
            for column, (values, role, kind) in columns.items():
                monitor.log_batch(values[part], column, role, kind)
    _SCHEMA_WRITTEN.add(name)
