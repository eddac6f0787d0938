"""dvc.yaml lists, for every stage, exactly the project modules its command imports.

The import closure is read from the source (every `import`, at module level or inside a function,
that names a `pipeline` module), so a module a stage imports lazily counts too. A missing dep
leaves `dvc repro` "up to date" after an edit that changes results; an extra one reruns a stage
for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.support import imports

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pipeline"


def import_closure(module: str) -> set[Path]:
    """The files of `module` and of every project module it imports, transitively."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += imports.local_imports(imports.module_file(name), (PACKAGE,))
    files = {imports.module_file(name) for name in seen}
    return {path for path in files if path.name != "__init__.py" or code_in(path)}


def code_in(path: Path) -> bool:
    """Whether a package's __init__.py does anything beyond its docstring."""
    body = ast.parse(path.read_text()).body
    return any(
        not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body
    )


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    body = stage.get("do", stage)
    match = re.search(r"python -m ([\w.]+)", body["cmd"])
    assert match, f"stage command {body['cmd']!r} does not run a module with python -m"
    return match.group(1)


def declared_code(stage: dict) -> set[Path]:
    body = stage.get("do", stage)
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in body.get("deps", [])]
    return {REPO / dep for dep in deps if dep.endswith(".py")}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_exactly_the_modules_it_imports(name):
    stage = stages()[name]
    needed = import_closure(stage_module(stage))
    declared = declared_code(stage)
    missing = sorted(str(path.relative_to(REPO)) for path in needed - declared)
    extra = sorted(str(path.relative_to(REPO)) for path in declared - needed)
    assert not missing, f"dvc.yaml stage {name!r} misses deps on {missing}"
    assert not extra, f"dvc.yaml stage {name!r} depends on modules it never imports: {extra}"


def test_the_closure_follows_lazy_imports(tmp_path):
    # pipeline.stages.train imports pipeline.model.architectures only inside train(): the closure
    # still has it.
    assert REPO / "pipeline" / "model" / "architectures.py" in import_closure(
        "pipeline.stages.train"
    )
    assert REPO / "pipeline" / "stages" / "prepare.py" not in import_closure(
        "pipeline.stages.train"
    )
