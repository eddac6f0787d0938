"""A stop signal (SIGTERM from a CI timeout, Ctrl-C) turned into an exception that unwinds.

`pipeline.tracking` wraps every MLflow run in `stop_on_signals`, so a stopped run ends KILLED
instead of being left RUNNING; `train` defers the stop around Keras `fit`.

A whole stage (`evaluate`) runs inside `stoppable()`: a stop is noted at once and honoured at the
stage's next safe point. It calls `checkpoint()` between its steps (and hands `when_asked()` to
Keras's `predict`), and `begin_commit()` when it starts the part that must not be cut
(registering, writing its outputs): a stop after that lets the stage finish first. Either way the
stage then ends with `Stopped`, which its `main` turns into exit code 128 + signal. Raising from
the signal handler itself is not safe while TensorFlow works (`stop_deferred`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGINT) while a run was active."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class _StopState:
    deferring: bool = False
    signum: int | None = None


_stop = _StopState()


def _on_stop_signal(signum, frame):
    if _stop.deferring:
        _stop.signum = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Stopped` (a KeyboardInterrupt) inside the block, so `with`
    blocks unwind instead of the process vanishing; the old handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """Inside, a stop signal is only noted (`stop_requested()`); `Stopped` comes at the end.

    For Keras `fit`: an exception raised from a signal handler while TensorFlow's threads are
    mid-step has crashed the process (glibc: "free(): invalid next size"); a callback that sets
    `model.stop_training` when `stop_requested()` ends the fit cleanly after the current step.
    Nested in another such block (a whole stage deferring, `stoppable`), it leaves the noted stop
    to the outer one.
    """
    outer = _stop.deferring
    if not outer:
        _stop.signum = None
    _stop.deferring = True
    try:
        yield
    finally:
        _stop.deferring = outer
    if _stop.signum is not None and not outer:
        raise Stopped(_stop.signum)


def stop_requested() -> bool:
    return _stop.signum is not None


def stop_signal() -> int | None:
    """The stop signal noted inside `stop_deferred`, if any."""
    return _stop.signum


@dataclass
class _Progress:
    committed: bool = False


_progress = _Progress()


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM and SIGINT inside only note a stop; `checkpoint()` (or the end of the block, when
    the stop came in after `begin_commit()`) raises `Stopped` for it."""
    _progress.committed = False
    with stop_on_signals(), stop_deferred():
        yield


def checkpoint() -> None:
    """Raise `Stopped` if a stop came in, unless the stage is committing."""
    signum = stop_signal()
    if signum is not None and not _progress.committed:
        raise Stopped(signum)


def begin_commit() -> None:
    """From here the stage finishes whatever comes in (a last checkpoint first)."""
    checkpoint()
    _progress.committed = True


def committed() -> bool:
    """Whether the stage had begun its uncut part (for the message of a stopped stage)."""
    return _progress.committed


def when_asked():
    """A Keras callback that stops `predict` (raising `Stopped`) after the batch in
    which a stop came in."""
    import keras

    class StopWhenAsked(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            checkpoint()

    return StopWhenAsked()
