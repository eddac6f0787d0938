"""REQUIRE_EVERY_TEST=1 turns a test's own skip into a failure that says why it skipped."""

from __future__ import annotations

import subprocess

from tests.support import nested

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
    return nested.run_tests(
        tmp_path,
        SKIPPING,
        plugin="tests.support.strict_skips",
        without="REQUIRE_EVERY_TEST",
        environment=environment,
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
