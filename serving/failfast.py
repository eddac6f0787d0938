"""Fail fast: a service whose worker cannot load its model stops, and `bentoml serve` exits 1.

BentoML restarts a worker whose start-up fails, forever, while `/readyz` hangs; and when its
arbiter is stopped by a signal it exits 0. So a worker that cannot start leaves its reason in a
file named after the arbiter (its parent) and interrupts it; the arbiter, which imported
`serving.service` too, finds the file as it exits and turns the exit status into a failure.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("bentoml.serving")
EXIT_STATUS = 1


def _marker(arbiter_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"serving-cannot-start-{arbiter_pid}"


def arm() -> None:
    """In the arbiter (where no worker index is set): exit failing if a worker left a reason."""
    from bentoml._internal.context import server_context

    if server_context.worker_index is None:
        atexit.register(_exit_if_a_worker_failed, os.getpid())


def stop_server(reason: str) -> None:
    """From a worker: log `reason`, leave it for the arbiter, and stop the whole server."""
    log.critical("cannot start: %s", reason)
    from bentoml._internal.context import server_context

    if server_context.worker_index is None:
        return  # not under `bentoml serve` (tests build the app in-process): the error is raised
    arbiter = os.getppid()
    _marker(arbiter).write_text(reason)
    os.kill(arbiter, signal.SIGINT)


def _exit_if_a_worker_failed(pid: int) -> None:
    marker = _marker(pid)
    if not marker.exists():
        return
    reason = marker.read_text(errors="replace")
    marker.unlink(missing_ok=True)
    print(f"bentoml serve: the service cannot start: {reason}", file=sys.stderr, flush=True)
    # sys.exit in an atexit hook cannot change the status any more; os._exit still can.
    os._exit(EXIT_STATUS)
