"""Atomic file writing: an output is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


@contextmanager
def atomic_path(path: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    `suffix` lets writers that insist on an extension (Keras wants `.keras`) use the temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp makes the file private (0600); outputs are ordinary readable files.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_with(path: Path, writer: Callable[[BinaryIO], Any]) -> None:
    """Write `path` atomically by calling `writer` with an open binary file."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        writer(handle)


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda handle: handle.write(data))


def write_json(path: Path, value: Any) -> None:
    """Indented JSON in the value's own key order; UTF-8, so class names stay readable."""
    text = json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    write_bytes(path, text.encode())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    write_with(path, lambda handle: np.savez(handle, **arrays))


def save_figure(path: Path, figure: Any) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    from matplotlib import pyplot

    try:
        write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    finally:
        pyplot.close(figure)


def save_keras(path: Path, model: Any) -> None:
    """Save a Keras model atomically."""
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def digest(value: Any) -> str:
    """A short, stable sha256 of a JSON-serialisable value (e.g. the four file checksums)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
