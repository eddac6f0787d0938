"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing page or
image fails), `make docs` serves it on 127.0.0.1, and the README stays short with working links."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import chromium
from tests.support.servers import REPO_ROOT, free_port

README = REPO_ROOT / "README.md"
# Markdown links and images: [text](target) and ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# mkdocs-material's banner about MkDocs 2.0 is noise in a test's output.
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = build(REPO_ROOT / "mkdocs.yml", site)
    assert built.returncode == 0, built.stdout + built.stderr
    return site


def page_of(target: str, site: Path) -> tuple[Path, str]:
    """The built HTML page for a link into docs/ (`docs/serving.md#errors`) and its anchor."""
    path, _, anchor = target.partition("#")
    relative = Path(path).relative_to("docs")
    name = relative.with_suffix("")
    html = site / "index.html" if name.name == "index" else site / name / "index.html"
    return html, anchor


def test_every_page_in_the_nav_is_built(site: Path) -> None:
    pages = sorted(path.stem for path in (REPO_ROOT / "docs").glob("*.md"))
    assert "performance" in pages and "serving" in pages
    for stem in pages:
        html = site / "index.html" if stem == "index" else site / stem / "index.html"
        assert html.is_file(), f"docs/{stem}.md was not built"


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "docs", tmp_path / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "development.md"
    page.write_text(page.read_text() + "\nSee [nothing](no-such-page.md).\n")
    built = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-page.md" in built.stdout + built.stderr


def test_the_readme_is_short_and_its_links_and_images_resolve(site: Path) -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    targets = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://"))]
    assert any(t.startswith("docs/images/") for t in targets), "the README shows no screenshot"
    assert any(t.startswith("docs/performance.md") for t in targets)
    for target in targets:
        path = target.partition("#")[0]
        assert (REPO_ROOT / path).exists(), f"README links to {target}, which does not exist"
        if path.startswith("docs/") and path.endswith(".md"):
            html, anchor = page_of(target, site)
            if anchor:
                assert f'id="{anchor}"' in html.read_text(), f"README: no #{anchor} in {path}"


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    texts = [README.read_text(), *(p.read_text() for p in (REPO_ROOT / "docs").glob("*.md"))]
    named = {name for text in texts for name in re.findall(r"\bmake ([a-z][a-z-]*)", text)}
    assert {"repro", "test", "serve", "ui", "docs"} <= named
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


@pytest.mark.slow
def test_make_docs_serves_the_site_on_loopback() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mkdocs", "serve", "--dev-addr", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/serving/", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, "mkdocs serve exited"
                assert time.monotonic() < deadline, "mkdocs serve did not answer in 60 s"
                time.sleep(0.5)
        assert answer.status_code == 200
        assert "/predict_image" in answer.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def drawn_home(site: Path) -> str:
    """The site's home page after its scripts ran, in offline headless Chromium."""
    return chromium.rendered_dom((site / "index.html").as_uri(), budget_ms=20000)


def test_the_home_page_draws_the_flow_chart_offline(site: Path, tmp_path: Path) -> None:
    """The README's Mermaid flow is drawn on the site with nothing fetched from the internet:
    mkdocs-material draws it with the Mermaid the site carries (`make docs-assets`) into a
    `div.mermaid` in place of its code. Without that copy the offline page keeps the code."""
    if not (site / "javascripts" / "mermaid.min.js").is_file():
        pytest.skip("no docs/javascripts/mermaid.min.js: `make docs-assets` fetches it with npm")
    dom = drawn_home(site)
    assert '<div class="mermaid"></div>' in dom, "the flow chart was not drawn"
    assert "flowchart LR" not in dom, "the flow chart is still shown as code"
    without = tmp_path / "site"
    shutil.copytree(site, without)
    (without / "javascripts" / "mermaid.min.js").unlink()
    assert "flowchart LR" in drawn_home(without)
