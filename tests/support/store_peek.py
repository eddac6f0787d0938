"""A look into a SQLite MLflow store without MLflow, for loops that wait on another process
writing to it: one query on a read-only connection costs ~0.1 ms, where MlflowClient's (SQLAlchemy,
filter parsing) costs several ms, and a loop asking every 10-20 ms took a share of a core from
the process it waited for."""

from __future__ import annotations

import sqlite3
from typing import Any

PREFIX = "sqlite:///"


def first_row(tracking_uri: str, query: str, *params: Any) -> tuple | None:
    """The first row `query` gives on the store at `tracking_uri` (sqlite:///<path>); None when
    there is none, or the store is busy being written (ask again)."""
    if not tracking_uri.startswith(PREFIX):
        raise ValueError(f"not a SQLite store: {tracking_uri}")
    path = tracking_uri[len(PREFIX) :]
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5) as connection:
            return connection.execute(query, params).fetchone()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return None
        raise
