"""Headless Chromium from the command line: a page's DOM after its scripts ran, a screenshot.

Debian's `chromium` (`make test` installs it as root); tests that need it skip, saying why,
where it is missing. For pages driven by clicks, see tests/integration/service/test_service_page.py
(Selenium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import REPO_ROOT

# Where tests leave screenshots for people to look at; git-ignored.
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"
# The screenshots README.md and docs/ show; committed, so the site builds from a clean clone.
# `DOCS_IMAGES=1` makes the browser tests refresh them (see docs/development.md).
DOCS_IMAGES = REPO_ROOT / "docs" / "images"
DOCS_SHOWN = frozenset({"ui-upload.png", "ui-phone-answer.png", "mlflow-training-runs.png"})
# Every host name resolves to nothing: a page that needs the network shows it. IP literals
# (a server on 127.0.0.1) still connect.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def executable() -> str:
    """The Chromium binary, or skip the test naming what to install."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "no Chromium here: `make test` installs Debian's chromium when it runs as root or"
            " with passwordless sudo"
        )
    return found


def headless(url: str, *arguments: str, budget_ms: int = 30000) -> subprocess.CompletedProcess:
    """Chromium, headless and offline, on `url` for `budget_ms` of virtual time."""
    command = [
        executable(),
        *("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", OFFLINE),
        f"--virtual-time-budget={budget_ms}",
        *arguments,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def rendered_dom(url: str, *, budget_ms: int = 30000) -> str:
    """The page's DOM once its scripts have run."""
    return headless(url, "--dump-dom", budget_ms=budget_ms).stdout


def screenshot(url: str, name: str, *, budget_ms: int = 30000) -> Path:
    """A PNG of the page under reports/screenshots/; its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    headless(url, f"--screenshot={path}", budget_ms=budget_ms)
    return path


def for_docs(path: Path) -> Path | None:
    """Copy a screenshot the docs show into docs/images/ when DOCS_IMAGES=1; the copy's path,
    else None. Off by default so that `make test` leaves the committed images alone."""
    if os.environ.get("DOCS_IMAGES") != "1" or path.name not in DOCS_SHOWN:
        return None
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    target = DOCS_IMAGES / path.name
    shutil.copyfile(path, target)
    return target
