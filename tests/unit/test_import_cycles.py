"""No import loops in pipeline/ and serving/: every import counts, including those inside
functions and under `TYPE_CHECKING` (which hide a loop from Python, not from a reader)."""

from __future__ import annotations

import pytest

from tests.support import imports

PACKAGES = ("pipeline", "serving")


def test_the_project_has_no_import_loops():
    loops = imports.cycles(imports.graph(PACKAGES))
    assert not loops, "import loops (move the shared part down): " + "; ".join(
        " -> ".join(loop) for loop in loops
    )


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c", "a"], ["d", "d"]]),
    ],
)
def test_loops_are_found_and_named(edges, expected):
    assert sorted(imports.cycles(edges)) == expected


def test_lazy_and_type_checking_imports_count(tmp_path, monkeypatch):
    """An import inside a function or under TYPE_CHECKING is an edge of the graph."""
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "one.py").write_text("def f():\n    from pipeline import two\n")
    (package / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.one import f\n"
    )
    monkeypatch.setattr(imports, "REPO", tmp_path)
    assert imports.cycles(imports.graph(("pipeline",))) == [
        ["pipeline.one", "pipeline.two", "pipeline.one"]
    ]
