"""A stop signal (SIGTERM from a CI timeout, Ctrl-C) turned into an exception that unwinds.

`pipeline.tracking` wraps every MLflow run in `stop_on_signals`, so a stopped run ends KILLED
instead of being left RUNNING; `train` defers the stop around Keras `fit`.
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
    """
    _stop.deferring, _stop.signum = True, None
    try:
        yield
    finally:
        _stop.deferring = False
    if _stop.signum is not None:
        raise Stopped(_stop.signum)


def stop_requested() -> bool:
    return _stop.signum is not None
