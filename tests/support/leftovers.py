"""No test leaves a process behind: a session-level check (a pytest plugin).

At start the session puts a marker in its own environment, which every process it starts
inherits: servers, DVC's detached queue workers, Ray's daemons, Chromium. Processes that change
their parent (daemons) or their session keep it. At the end, whatever still carries the marker,
but for this process, is listed, ended (SIGTERM, then SIGKILL) and reported, and the session
fails. Processes started with an environment of their own (not copied from this one) escape it;
multiprocessing's helpers of this very process (its resource tracker) are not leftovers, and a
helper whose owner has just ended (an xdist worker's tracker) gets GRACE seconds to exit with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

MARKER = "MNIST_PIPELINE_TEST_SESSION"
GRACE = 5.0
# Helpers Python's multiprocessing starts for the session's own process (on first use, by
# whichever library): they live as long as it does and exit with it, so they are not left behind.
OWN_HELPERS = (
    "from multiprocessing.resource_tracker import main",
    "from multiprocessing.forkserver import main",
)


def pytest_configure(config: pytest.Config) -> None:
    # An xdist worker or a nested pytest (tests that run pytest) keeps its parent's marker, so
    # only the outermost session checks.
    if MARKER not in os.environ:
        os.environ[MARKER] = f"{os.getpid()}-{secrets.token_hex(4)}"
        config.stash[_OWNER] = True


_OWNER = pytest.StashKey[bool]()


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...); None when
    the process is gone. The name may hold spaces and parentheses, the fields after it do not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended: only its exit status is left)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process (zombies excluded) whose environment holds
    `MARKER=marker`, this one and its ancestors excluded."""
    needle = f"{MARKER}={marker}".encode()
    excluded = ancestors(os.getpid())
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in excluded:
            continue
        with contextlib.suppress(OSError):
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if not alive(int(entry.name)):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if own_helper(entry, command):
                continue
            found[int(entry.name)] = command.strip()[:200]
    return found


def is_helper(command: str) -> bool:
    return any(helper in command for helper in OWN_HELPERS)


def settled(marker: str) -> dict[int, str]:
    """The marked processes, once multiprocessing's helpers among them have had GRACE seconds to
    exit: a helper ends when its owner does (on its pipe's end of file), a moment later, so one
    of an xdist worker that has just exited is still running when the session finishes."""
    deadline = time.monotonic() + GRACE
    left = marked_processes(marker)
    while any(map(is_helper, left.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(marker)
    return left


def own_helper(entry: Path, command: str) -> bool:
    """Whether the process is a multiprocessing helper of this process (`OWN_HELPERS`)."""
    fields = stat_fields(entry.name)
    return fields is not None and int(fields[1]) == os.getpid() and is_helper(command)


def ancestors(pid: int) -> set[int]:
    """`pid` and its parents up to init."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        fields = stat_fields(pid)
        if fields is None:
            break
        pid = int(fields[1])
    return seen


def end(pids: list[int]) -> None:
    """SIGTERM, up to GRACE seconds, then SIGKILL for what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        reap_children()
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    reap_children()


def reap_children() -> None:
    """Collect our own children that have exited, so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.stash.get(_OWNER, False):
        return
    reap_children()
    left = settled(os.environ[MARKER])
    if not left:
        return
    end(list(left))
    lines = "\n".join(f"  pid {pid}: {command}" for pid, command in sorted(left.items()))
    message = f"processes started by the tests were still running at the end (now ended):\n{lines}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
