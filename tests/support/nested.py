"""A pytest session of its own, on a test file written by a test: how the suite's own plugins
(tests/support/strict_skips.py, tests/support/leftovers.py) are tested."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.servers import REPO_ROOT


def run_tests(
    folder: Path,
    source: str,
    *,
    plugin: str,
    without: str,
    environment: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`source` as `folder`/test_nested.py, run with `plugin` the only one of ours loaded, the
    variable `without` left out of its environment and `environment` added."""
    (folder / "test_nested.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != without} | dict(environment or {})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider"),
            *("-p", plugin, str(folder / "test_nested.py")),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
