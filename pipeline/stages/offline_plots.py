"""Set-up step: a page template that lets `dvc plots show` render without a network.

DVC's HTML page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on a machine without internet
its charts stay blank. This fetches the versions DVC pins (read from `dvc_render`) with `npm pack`
and writes a template with the three libraries inline; `.dvc/config` names it as
`plots.html_template`, so `dvc plots show` and `dvc plots diff` use it.

    python -m pipeline.stages.offline_plots --out .dvc/plots/offline.html

`make install` runs it. Without npm it writes DVC's own page (CDN scripts) and says so, so the
configured template always exists.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipeline import io

# Placeholders DVC fills in; `{scripts}` (the CDN tags) is left out of the offline page.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <meta charset="utf-8">
    <!-- %(libraries)s, inline: this page loads nothing from the network. -->
%(scripts)s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def pinned_libraries() -> dict[str, str]:
    """{npm package: version} of the scripts DVC's Vega renderer loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/([\w-]+)@([\w.-]+)", VegaRenderer.SCRIPTS))
    if set(found) != {"vega", "vega-lite", "vega-embed"}:
        raise RuntimeError(f"unexpected scripts in dvc_render's Vega page: {found}")
    return found


def fetch_scripts(libraries: dict[str, str], work: Path) -> dict[str, str]:
    """{package: minified build} for each package, from `npm pack` tarballs."""
    specs = [f"{name}@{version}" for name, version in libraries.items()]
    subprocess.run(
        ["npm", "pack", "--silent", *specs], cwd=work, check=True, capture_output=True, timeout=300
    )
    scripts = {}
    for name, version in libraries.items():
        with tarfile.open(work / f"{name}-{version}.tgz") as archive:
            member = archive.extractfile(f"package/build/{name}.min.js")
            if member is None:
                raise RuntimeError(f"{name}@{version} has no build/{name}.min.js")
            scripts[name] = member.read().decode()
    return scripts


def offline_page(libraries: dict[str, str], scripts: dict[str, str]) -> str:
    """The template: DVC's page with the libraries inline instead of its CDN tags."""
    for name, source in scripts.items():
        if "</script" in source.lower():
            raise RuntimeError(f"{name} cannot be inlined: it contains a closing script tag")
    tags = "\n".join(f"<script>{scripts[name]}</script>" for name in libraries)
    names = ", ".join(f"{name}@{version}" for name, version in libraries.items())
    return PAGE % {"libraries": names, "scripts": tags}


def online_page() -> str:
    """DVC's own page, CDN scripts and all: the fallback when npm cannot fetch the libraries."""
    from dvc_render.html import PAGE_HTML

    return PAGE_HTML


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the template to write")
    args = parser.parse_args(argv)
    libraries = pinned_libraries()
    if shutil.which("npm") is None:
        io.write_bytes(args.out, online_page().encode())
        print(f"npm not found: {args.out} is DVC's own page, which loads Vega from a CDN")
        return 0
    with tempfile.TemporaryDirectory() as work:
        try:
            scripts = fetch_scripts(libraries, Path(work))
        except (subprocess.SubprocessError, OSError, RuntimeError) as error:
            io.write_bytes(args.out, online_page().encode())
            print(f"npm could not fetch the Vega libraries ({error}); {args.out} uses the CDN")
            return 0
    io.write_bytes(args.out, offline_page(libraries, scripts).encode())
    print(f"{args.out}: dvc plots pages render offline ({', '.join(libraries)} inline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
