"""Every third-party package the code imports directly is declared in pyproject.toml.

A package that only arrives as someone else's dependency can vanish with that package's next
release. Runtime code (pipeline/, serving/, bench/) may use `[project] dependencies` and the
TensorFlow extras, and `scale` (Ray, for `pipeline.sweep` only: `dvc repro` never imports it);
tests may also use the `dev` extra and what it pulls in (`team`, `scale`).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCAL = {"pipeline", "serving", "tests", "bench"}
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def declared(*extras: str) -> set[str]:
    allowed = names(PROJECT["dependencies"])
    for extra in extras:
        allowed |= names(PROJECT["optional-dependencies"][extra])
    return allowed


def top_level_imports(folder: str) -> dict[str, str]:
    """{top-level module: a file importing it} for absolute imports under `folder`."""
    found: dict[str, str] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], str(path.relative_to(REPO)))
    return found


def undeclared(folder: str, allowed: set[str]) -> list[str]:
    distributions = metadata.packages_distributions()
    missing = []
    for module, where in top_level_imports(folder).items():
        if module in sys.stdlib_module_names or module in LOCAL or module == "__future__":
            continue
        providers = {canonicalize_name(name) for name in distributions.get(module, [])}
        if not providers & allowed:
            missing.append(f"{module} (imported in {where}; installed by {sorted(providers)})")
    return missing


@pytest.mark.parametrize("folder", ["pipeline", "serving", "bench"])
def test_runtime_imports_are_project_dependencies(folder):
    assert undeclared(folder, declared("cpu", "gpu", "scale")) == []


def test_test_imports_are_declared_for_development():
    allowed = declared("cpu", "gpu", "dev", "team", "scale")
    assert undeclared("tests", allowed) == []
