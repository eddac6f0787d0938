"""How the tests tell that queued DVC experiments are done without asking DVC every time: the
refs DVC commits their results and failures to (tests/support/dvc_queue.py)."""

from __future__ import annotations

import subprocess

from tests.support import dvc_queue


def git(root, *command: str) -> str:
    return subprocess.run(
        ["git", *command], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_finished_experiments_and_failures_are_read_from_dvc_s_refs(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a").write_text("a")
    git(tmp_path, "add", "a")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert dvc_queue.finished_refs(tmp_path) == (set(), False)
    # What DVC keeps while experiments are queued and running: not results.
    git(tmp_path, "update-ref", "refs/exps/celery/stash", head)
    git(tmp_path, "update-ref", "refs/exps/exec/EXEC_BASELINE", head)
    assert dvc_queue.finished_refs(tmp_path) == (set(), False)
    # A finished experiment: refs/exps/<first 2 of the baseline>/<the rest>/<name>.
    git(tmp_path, "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/seed-2", head)
    assert dvc_queue.finished_refs(tmp_path) == ({"seed-2"}, False)
    git(tmp_path, "update-ref", "refs/exps/celery/failed", head)
    assert dvc_queue.finished_refs(tmp_path) == ({"seed-2"}, True)
