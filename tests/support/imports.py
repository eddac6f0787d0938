"""The project's own import graph, read from the source: every `import` at any depth (inside
functions and under `TYPE_CHECKING` too), so lazy imports count like the others."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL = ("pipeline", "serving", "tests", "bench")


def imports_of(path: Path) -> list[str]:
    """Every absolute import in the file at `path`, at any depth."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
            # `from pipeline import io` imports pipeline.io; `from pipeline.io import x` too.
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def module_file(module: str) -> Path | None:
    """The file of a module of this repository (a package's `__init__.py`), or None."""
    if module.split(".")[0] not in LOCAL:
        return None
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    """The dotted name of the module in the file at `path`."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def local_imports(path: Path, packages: tuple[str, ...] = LOCAL) -> set[str]:
    """The dotted names of the modules of `packages` that the file at `path` imports."""
    return {
        name
        for name in imports_of(path)
        if name.split(".")[0] in packages and module_file(name) is not None
    }


def graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports, for every module of `packages`."""
    return {
        module_name(path): local_imports(path, packages)
        for package in packages
        for path in sorted((REPO / package).rglob("*.py"))
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other in a loop (Tarjan's strongly connected
    components of more than one module, or a module importing itself), each as a list that
    starts and ends with the same module, following imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(loop_through(sorted(component), edges))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def loop_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One import path from the first module of `component` back to itself, inside it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    pending = [start]
    while pending:
        node = pending.pop(0)
        for target in sorted(edges.get(node, ()) & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                pending.append(target)
    return [*component, start]
