"""The house rule of docs/development.md: no module of the product code passes 400 lines.

A module that grows past it is split along what its parts do (see pipeline/champion/scoring.py and
pipeline/champion/handoff.py beside pipeline/stages/evaluate.py), not by moving lines around.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT = 400


@pytest.mark.parametrize("package", ["pipeline", "serving"])
def test_no_module_passes_the_line_limit(package):
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    over = {
        str(path.relative_to(REPO)): count
        for path in modules
        if (count := len(path.read_text().splitlines())) > LIMIT
    }
    assert over == {}, f"split these along what their parts do: {over}"
