"""DVC's experiment queue run by a test, and its workers ended by the test, whatever happens.

`dvc queue start` spawns detached workers (`dvc exp queue-worker`) that keep the caller's stdout
and stderr: a caller reading those through pipes waits until every worker exits. Here its output
goes to a file instead. Workers exit by themselves once the queue is empty, but dvc-task 0.40's
monitor can read a busy worker's missed reply as "nothing running" and send a shutdown that never
takes effect; such a worker then sleeps for good after its last experiment. `end_workers` asks
them to stop (`dvc queue stop`) and ends what is left by the pid DVC records for each worker
(`.dvc/tmp/exps/celery/<worker>.json`, its log beside it as `<worker>.out`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import leftovers, project
from tests.support.project import BIN_DIR

WORKERS_DIR = Path(".dvc") / "tmp" / "exps" / "celery"


@dataclass(frozen=True)
class Worker:
    """A queue worker as DVC recorded it."""

    name: str
    pid: int
    log: Path

    def alive(self) -> bool:
        return leftovers.alive(self.pid)

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"


def detached(
    root: Path, *command: str, env: Mapping[str, str], log: Path, timeout: float = 120
) -> str:
    """Run a DVC command that may leave detached processes, its output in `log` (appended) rather
    than in pipes those processes would hold open; its output. AssertionError when it fails."""
    with log.open("a") as out:
        start = out.tell()
        result = subprocess.run(
            [str(BIN_DIR / "dvc"), *command],
            cwd=root,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    text = log.read_text(errors="replace")[start:]
    assert result.returncode == 0, f"dvc {' '.join(command)} exited {result.returncode}:\n{text}"
    return text


def workers(root: Path) -> list[Worker]:
    """Every worker DVC has recorded in the project at `root` (running or not)."""
    found = []
    for info in sorted((root / WORKERS_DIR).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(info.read_text())["pid"])
            found.append(Worker(info.stem, pid, info.with_suffix(".out")))
    return found


def end_workers(
    root: Path, env: Mapping[str, str], *, log: Path, grace: float = 20.0
) -> list[Worker]:
    """Stop the queue's workers: `dvc queue stop`, then SIGTERM and SIGKILL by pid to those still
    alive after `grace` seconds. The workers that had to be ended by pid."""
    if not any(worker.alive() for worker in workers(root)):
        return []
    with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
        detached(root, "queue", "stop", env=env, log=log, timeout=60)
    stuck = wait_for_exit(workers(root), grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for worker in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)
        if not wait_for_exit(stuck, 5.0):
            break
    return stuck


def wait_for_exit(candidates: list[Worker], timeout: float) -> list[Worker]:
    """Those of `candidates` still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [worker for worker in candidates if worker.alive()]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def report(stuck: list[Worker]) -> str:
    """What to print about workers that had to be ended by pid."""
    return "\n".join(
        f"queue worker {worker.name} (pid {worker.pid}) did not exit after its experiments "
        f"finished; ended by pid. Its log ends:\n{worker.log_tail()}"
        for worker in stuck
    )


# `dvc queue status` costs ~2 s of CPU (a DVC process); git refs are read in milliseconds.
STATUS_EVERY_S = 30.0
REFS_EVERY_S = 1.0


def finished_refs(root: Path) -> tuple[set[str], bool]:
    """The names of the experiments whose results DVC has committed (`refs/exps/<xx>/<sha>/<name>`)
    and whether any queued experiment has failed (DVC keeps those in `refs/exps/celery/failed`)."""
    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    names = {ref.split("/")[-1] for ref in listed if len(ref.split("/")) == 5}
    return names, "refs/exps/celery/failed" in listed


def wait_until_done(root: Path, env: Mapping[str, str], names: list[str], timeout: float) -> str:
    """`dvc queue status` once nothing is queued or running. It is asked when the git refs say
    every one of `names` has finished or one has failed, and every STATUS_EVERY_S seconds in any
    case; in between only the refs are read, so that the waiting does not take CPU from the
    experiments. AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    asked = float("-inf")
    while True:
        done, failed = finished_refs(root)
        if failed or done >= set(names) or time.monotonic() - asked >= STATUS_EVERY_S:
            asked = time.monotonic()
            status = project.run(root, "dvc", "queue", "status", env=env, timeout=120).stdout
            if "Queued" not in status and "Running" not in status:
                return status
        assert time.monotonic() < deadline, f"queue not done after {timeout:.0f} s:\n{status}"
        time.sleep(REFS_EVERY_S)
