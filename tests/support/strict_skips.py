"""With REQUIRE_EVERY_TEST=1 (CI sets it), a test that skips itself fails instead.

`make test` installs what the slow tests need (Debian's PostgreSQL, Chromium, Fashion-MNIST)
where it may; elsewhere those tests skip and say why. CI must not pass by skipping them.
Markers deselected with -m are not skips and are not affected.
"""

from __future__ import annotations

import os

import pytest

VARIABLE = "REQUIRE_EVERY_TEST"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(VARIABLE) != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped where {VARIABLE}=1 forbids it: {reason.removeprefix('Skipped: ')}"
