"""Stops (SIGTERM, Ctrl-C) in a stage that touches MLflow runs: noted at once, honoured at the
stage's next safe point, so no run is left RUNNING and no output half-made.

A stage runs inside `stoppable()`; it calls `checkpoint()` between its steps (and hands
`when_asked()` to Keras's `predict`), and `begin_commit()` when it starts the part that must not
be cut (registering, writing its outputs): a stop after that lets the stage finish first. Either
way the stage then ends with `tracking.Stopped`, which `main` turns into exit code 128 + signal.
Raising from the signal handler itself is not safe while TensorFlow works (tracking.stop_deferred).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline import tracking


@dataclass
class _Progress:
    committed: bool = False


_progress = _Progress()


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM and SIGINT inside only note a stop; `checkpoint()` (or the end of the block, when
    the stop came in after `begin_commit()`) raises `tracking.Stopped` for it."""
    _progress.committed = False
    with tracking.stop_on_signals(), tracking.stop_deferred():
        yield


def checkpoint() -> None:
    """Raise `tracking.Stopped` if a stop came in, unless the stage is committing."""
    signum = tracking.stop_signal()
    if signum is not None and not _progress.committed:
        raise tracking.Stopped(signum)


def begin_commit() -> None:
    """From here the stage finishes whatever comes in (a last checkpoint first)."""
    checkpoint()
    _progress.committed = True


def committed() -> bool:
    """Whether the stage had begun its uncut part (for the message of a stopped stage)."""
    return _progress.committed


def when_asked():
    """A Keras callback that stops `predict` (raising `tracking.Stopped`) after the batch in
    which a stop came in."""
    import keras

    class StopWhenAsked(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            checkpoint()

    return StopWhenAsked()
