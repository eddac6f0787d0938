"""Rows to BentoML's monitoring API (`bentoml.monitor`): the watch's and the shadow's records."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from serving.monitors import FileMonitor

# Per monitor whose first record this process wrote: the FileMonitor that takes the rest in
# bulk, or None for another kind of monitor, which gets every record through `bentoml.monitor`.
_WRITTEN: dict[str, FileMonitor | None] = {}

Item = TypeVar("Item")
Typed = Mapping[str, tuple[list[Any], str, str]]


def log_columns(name: str, columns: Mapping[str, tuple[list[Any], str, str]]) -> None:
    """Rows to the BentoML monitor `name`: column -> (values, role, kind), one value per row.

    A monitor's first record in a process goes through `bentoml.monitor`, one row alone: it
    writes the schema (roles and kinds), and BentoML would warn once per value after a column's
    first ("Column name ... is duplicated"). The rest go to `FileMonitor.add_rows`, written in
    bulk by the monitor's thread (serving.monitors), or through `bentoml.monitor` again where
    the configuration names another kind of monitor."""
    count = len(next(iter(columns.values()))[0])
    if name not in _WRITTEN:
        _first_record(name, columns)
        if count == 1:
            return
        columns = {
            column: (values[1:], role, kind) for column, (values, role, kind) in columns.items()
        }
    bulk = _WRITTEN[name]
    if bulk is not None:
        bulk.add_rows({column: values for column, (values, _, _) in columns.items()})
        return
    _record(name, columns)


def log_later(name: str, make: Callable[[list[Item]], Typed], item: Item, count: int) -> None:
    """`count` rows to the monitor `name` that `make([item])` gives (column -> (values, role,
    kind)). Where the rows go in bulk (a FileMonitor after its first record), `make` runs in its
    writer thread, once for every pending item it makes; `item` must not change after the call.
    Otherwise the rows are made now and go as `log_columns`."""
    bulk = _WRITTEN.get(name)
    if bulk is None:
        log_columns(name, make([item]))
        return
    bulk.add_later(_untyped(make), item, count)


@functools.cache
def _untyped(make: Callable[[list[Item]], Typed]) -> Callable[[list[Item]], dict[str, list[Any]]]:
    """`make` without the roles and kinds; one function per `make`, so that the writer thread
    sees consecutive items of the same `make` as one run."""

    def untyped(items: list[Item]) -> dict[str, list[Any]]:
        return {column: values for column, (values, _, _) in make(items).items()}

    return untyped


def flush() -> None:
    """Write every monitor's pending rows now: the service calls it as a worker stops, since
    BentoML's workers end without running `atexit`."""
    for monitor in _WRITTEN.values():
        if monitor is not None:
            monitor.flush()


def _first_record(name: str, columns: Mapping[str, tuple[list[Any], str, str]]) -> None:
    monitor = _record(
        name, {column: (values[:1], role, kind) for column, (values, role, kind) in columns.items()}
    )
    _WRITTEN[name] = monitor if isinstance(monitor, FileMonitor) else None


def _record(name: str, columns: Mapping[str, tuple[list[Any], str, str]]) -> Any:
    """The rows as one record of `bentoml.monitor(name)`; the monitor."""
    import bentoml

    with bentoml.monitor(name) as monitor:
        for column, (values, role, kind) in columns.items():
            monitor.log_batch(values, column, role, kind)
    return monitor
