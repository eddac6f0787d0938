"""Every third-party package the code imports directly is declared in pyproject.toml.

A package that only arrives as someone else's dependency can vanish with that package's next
release. Two sides: the service (every module `serving.service` imports, directly or in a
function) may use only `[project] dependencies` and the `serve` extra, so that `.[serve]` serves
without TensorFlow; the rest of the runtime code (pipeline/, serving.tools.package,
serving.tools.monitor,
bench/) may also use `train`, the TensorFlow extras and `scale` (Ray, for `pipeline.sweep` only:
`dvc repro` never imports it); tests may also use `dev` and `team`.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import imports

REPO = Path(__file__).resolve().parents[2]
LOCAL = {"pipeline", "serving", "tests", "bench"}
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def declared(*extras: str) -> set[str]:
    allowed = names(PROJECT["dependencies"])
    for extra in extras:
        allowed |= names(PROJECT["optional-dependencies"][extra])
    return allowed - {canonicalize_name(PROJECT["name"])}


def service_files() -> list[Path]:
    """The files of every local module `serving.service` imports, itself and transitively."""
    seen, queue = set(), [REPO / "serving" / "service.py"]
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        queue.extend(f for f in map(imports.module_file, imports.imports_of(path)) if f is not None)
    return sorted(seen)


def top_level_imports(paths: list[Path]) -> dict[str, str]:
    """{top-level module: a file importing it} for absolute imports in `paths`."""
    found: dict[str, str] = {}
    for path in paths:
        for module in imports.imports_of(path):
            found.setdefault(module.split(".")[0], str(path.relative_to(REPO)))
    return found


def undeclared(folder: str | list[Path], allowed: set[str]) -> list[str]:
    paths = sorted((REPO / folder).rglob("*.py")) if isinstance(folder, str) else folder
    distributions = metadata.packages_distributions()
    missing = []
    for module, where in top_level_imports(paths).items():
        if module in sys.stdlib_module_names or module in LOCAL or module == "__future__":
            continue
        providers = {canonicalize_name(name) for name in distributions.get(module, [])}
        if not providers & allowed:
            missing.append(f"{module} (imported in {where}; installed by {sorted(providers)})")
    return missing


@pytest.mark.parametrize("folder", ["pipeline", "serving", "bench"])
def test_runtime_imports_are_project_dependencies(folder):
    assert undeclared(folder, declared("serve", "train", "cpu", "gpu", "scale")) == []


def test_the_service_imports_only_what_the_serve_extra_installs():
    files = service_files()
    assert REPO / "serving" / "model.py" in files and REPO / "serving" / "routes.py" in files
    assert undeclared(files, declared("serve")) == []
    # Nor any module of the training side, which would bring TensorFlow in with it, nor the
    # offline tools (serving/tools/), which the bento leaves out.
    for folder in (REPO / "pipeline", REPO / "serving" / "tools"):
        assert not [path for path in files if folder in path.parents], files


def requirement_closure(extras: set[str]) -> set[str]:
    """The names of every distribution `pip install '.[extras]'` installs, by following the
    installed distributions' own requirements (with their markers and extras)."""
    import re

    project = canonicalize_name(PROJECT["name"])
    pending = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        pending += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
    found: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if name == project:
            for extra in requirement.extras - extras:
                extras = extras | {extra}
                pending += [Requirement(t) for t in PROJECT["optional-dependencies"][extra]]
            continue
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(re.sub(r"[-_.]+", "_", name)) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here, so nothing it requires is either
        for text in requires:
            inner = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if inner.marker is None or any(inner.marker.evaluate(e) for e in environments):
                pending.append(Requirement(str(inner).split(";")[0]))
    return found


def test_installing_the_service_alone_brings_no_tensorflow_keras_or_mlflow():
    serve = requirement_closure({"serve"})
    assert {"bentoml", "onnxruntime", "numpy"} <= serve
    assert not {name for name in serve if name.startswith(("tensorflow", "keras", "mlflow"))}
    # The check can see TensorFlow where it is: training brings it.
    assert {"tensorflow-cpu", "keras", "mlflow", "onnx"} <= requirement_closure({"cpu"})


def test_test_imports_are_declared_for_development():
    allowed = declared("serve", "train", "cpu", "gpu", "dev", "team", "scale")
    assert undeclared("tests", allowed) == []
