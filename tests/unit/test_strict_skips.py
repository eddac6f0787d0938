"""REQUIRE_EVERY_TEST=1 turns a test's own skip into a failure that says why it skipped."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import servers

SKIPPING = """
import pytest

def test_needs_a_tool():
    pytest.skip("the tool is not installed")

@pytest.mark.skipif(True, reason="never on this platform")
def test_marked():
    pass

def test_runs():
    pass
"""


def run(tmp_path, **environment: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "REQUIRE_EVERY_TEST"} | environment
    env["PYTHONPATH"] = str(servers.REPO_ROOT)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider"),
            *("-p", "tests.support.strict_skips", str(tmp_path)),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skips_stay_skips_by_default(tmp_path) -> None:
    result = run(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout


def test_skips_fail_where_every_test_is_required(tmp_path) -> None:
    result = run(tmp_path, REQUIRE_EVERY_TEST="1")
    assert result.returncode == 1, result.stdout
    # A skip in setup (a skipif marker, a fixture that skips) fails as an error.
    assert "1 failed, 1 passed, 1 error" in result.stdout
    assert "forbids it: the tool is not installed" in result.stdout
    assert "never on this platform" in result.stdout
