"""A test session that leaves a process behind fails, naming it, and the process is ended."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.support import leftovers, nested

# The daemon double-forks into a session of its own (as DVC's queue workers do) and writes its
# pid where the outer test can find it.
LEAVING = """
import os, subprocess, sys, time

def test_starts_a_daemon(tmp_path):
    code = "import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while not os.path.exists({pidfile!r}):
        time.sleep(0.05)

def test_cleans_up_after_itself():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

CLEAN = """
import subprocess, sys
from multiprocessing import resource_tracker

def test_runs_a_child_to_its_end():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_starts_the_session_s_own_resource_tracker():
    # Python's helper for this process: it lives as long as the session, and is not a leftover.
    resource_tracker.ensure_running()
"""


# A helper of Python's multiprocessing (its command line) whose owner has ended: it exits on its
# own a moment later, as an xdist worker's resource tracker does after the worker.
ORPHAN_HELPER = """
import subprocess, sys

HELPER = "from multiprocessing.resource_tracker import main; import time; time.sleep({seconds})"
OWNER = (
    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1]],"
    " start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL)"
)

def test_a_helper_outlives_its_owner_by_a_moment():
    subprocess.run([sys.executable, "-c", OWNER, HELPER], check=True)
"""


def run_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    return nested.run_tests(
        tmp_path, source, plugin="tests.support.leftovers", without=leftovers.MARKER
    )


def test_a_process_left_behind_fails_the_session_and_is_ended(tmp_path) -> None:
    pidfile = tmp_path / "daemon.pid"
    result = run_session(tmp_path, LEAVING.replace("{pidfile!r}", repr(str(pidfile))))
    pid = int(pidfile.read_text())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "processes left behind" in result.stdout
    assert f"pid {pid}: {sys.executable} -c import os, time" in result.stdout
    deadline = time.monotonic() + 10
    while leftovers.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftovers.alive(pid), f"pid {pid} still running"


def test_a_session_that_ends_its_processes_passes(tmp_path) -> None:
    result = run_session(tmp_path, CLEAN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processes left behind" not in result.stdout


def test_a_helper_that_exits_soon_after_its_owner_is_not_left_behind(tmp_path) -> None:
    result = run_session(tmp_path, ORPHAN_HELPER.replace("{seconds}", "1.5"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processes left behind" not in result.stdout


def test_a_helper_that_does_not_exit_is_left_behind(tmp_path) -> None:
    result = run_session(tmp_path, ORPHAN_HELPER.replace("{seconds}", "300"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "processes left behind" in result.stdout
    assert "multiprocessing.resource_tracker import main; import time; time.sleep(300)" in (
        result.stdout
    )
