"""The lock files in requirements/ (`make lock`, pipeline/environment.py) hold what pyproject.toml
asks for, with a hash for every pin and no package index, and this environment is what they pin.

A requirement added to or changed in pyproject.toml without `make lock` fails here twice over: the
digest in every lock file's header no longer matches (which `make install` checks too), and the
new requirement has no pin, or a pin its specifier refuses. Both are shown to fail on changed
copies of pyproject.toml.
"""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipeline import environment

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
FILES = (environment.JOINT, *environment.LAYERS)
LOCKS = {item.path: (REPO / item.path).read_text() for item in FILES}
# What an environment made by `make install` holds beside the pins: the installers and the
# project itself (installed with --no-deps).
NOT_LOCKED = {"pip", "uv", environment.canonical(PROJECT["name"])}


def requirements_of(project: dict, extras: tuple[str, ...]) -> list[Requirement]:
    """`project`'s dependencies and `extras`, following the extras that name the project itself
    (`mnist-mlops[train]`)."""
    found = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in map(Requirement, project["optional-dependencies"][extra]):
            if environment.canonical(requirement.name) == environment.canonical(project["name"]):
                pending += sorted(requirement.extras)
            else:
                found.append(requirement)
    return found


def pins_by_name(text: str) -> dict[str, list[environment.Pin]]:
    pins: dict[str, list[environment.Pin]] = {}
    for pin in environment.read_pins(text):
        pins.setdefault(pin.name, []).append(pin)
    return pins


def disagreements(project: dict, locks: dict[str, str]) -> list[str]:
    """Where the lock files ({path: text}) do not hold what `project`, pyproject.toml's [project]
    table, asks for: a digest from another pyproject.toml, a requirement with no pin, a pin its
    specifier refuses."""
    digest = environment.requirements_digest(project)
    problems = []
    for item in FILES:
        text = locks[item.path]
        if environment.stamp_of(text) != digest:
            problems.append(f"{item.path} was made from another pyproject.toml: run `make lock`")
        pins = pins_by_name(text)
        for requirement in requirements_of(project, item.extras):
            found = pins.get(environment.canonical(requirement.name), [])
            if not found:
                problems.append(f"{item.path} pins nothing for {requirement}")
            for pin in found:
                if not requirement.specifier.contains(pin.version, prereleases=True):
                    problems.append(f"{item.path}: {pin.name}=={pin.version} is not {requirement}")
    return problems


def test_every_lock_file_holds_what_pyproject_asks_for():
    assert disagreements(PROJECT, LOCKS) == []


def add(requirement: str, extra: str | None = None):
    def change(project: dict) -> None:
        group = project["optional-dependencies"][extra] if extra else project["dependencies"]
        group.append(requirement)

    return change


def tighten(name: str, specifier: str):
    def change(project: dict) -> None:
        for extra, group in project["optional-dependencies"].items():
            project["optional-dependencies"][extra] = [
                f"{name}{specifier}" if Requirement(text).name == name else text for text in group
            ]

    return change


@pytest.mark.parametrize(
    ("change", "also"),
    [
        # A package the lock already holds (bentoml brings it): only the digest sees the change.
        (add("rich>=13"), None),
        (add("left-pad>=1", "train"), "pins nothing for left-pad>=1"),
        (tighten("keras", ">=3.16,<4"), "keras==3.15.1 is not keras<4,>=3.16"),
        (add("requests>=2", "docs"), None),
    ],
    ids=["dependency-already-pinned", "new-package", "tighter-version", "extra-nobody-installs"],
)
def test_a_pyproject_changed_without_a_relock_fails(change, also):
    project = copy.deepcopy(PROJECT)
    change(project)
    problems = disagreements(project, LOCKS)
    stale = [item.path for item in FILES if f"{item.path} was made from another" in str(problems)]
    assert stale == [item.path for item in FILES], problems
    if also:
        assert any(also in problem for problem in problems), problems


def test_make_install_refuses_a_pyproject_changed_after_the_lock(tmp_path, capsys):
    """`python -m pipeline.environment check`, which the install runs first, on a copy of the
    checkout: silent as it is, exit 1 naming `make lock` once pyproject.toml asks for more."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / environment.LOCK_FOLDER, tmp_path / environment.LOCK_FOLDER)
    assert environment.main(["check", "--root", str(tmp_path)]) == 0
    text = (tmp_path / "pyproject.toml").read_text()
    changed = text.replace('"pyyaml>=6,<7",', '"pyyaml>=6,<7",\n    "rich>=13",', 1)
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    assert environment.main(["check", "--root", str(tmp_path)]) == 1
    assert "run `make lock`" in capsys.readouterr().err
    # A comment is not a requirement.
    (tmp_path / "pyproject.toml").write_text(text.replace("[project]", "# a note\n[project]", 1))
    assert environment.main(["check", "--root", str(tmp_path)]) == 0


@pytest.mark.parametrize("item", environment.LAYERS, ids=lambda item: item.name)
def test_every_pin_is_exact_with_hashes_and_no_index_is_named(item):
    text = LOCKS[item.path]
    pins = environment.read_pins(text)
    assert pins
    assert [pin.name for pin in pins if not pin.hashes] == []
    for pin in pins:
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", value) for value in pin.hashes), pin
    assert "://" not in text
    options = [line for line in text.splitlines() if line.startswith("-")]
    assert options == [], f"{item.path} carries pip options (an index, links): {options}"


@pytest.mark.parametrize("item", environment.LAYERS, ids=lambda item: item.name)
def test_every_layer_keeps_the_joint_resolutions_versions(item):
    """So layers installed together (cpu or gpu, dev, scale) agree, and the bento's serve.txt
    holds the versions training ran with."""
    joint = {
        (name, pin.version)
        for name, pins in pins_by_name(LOCKS[environment.JOINT.path]).items()
        for pin in pins
    }
    joint_names = {name for name, _ in joint}
    moved = [
        f"{pin.name}=={pin.version}"
        for pin in environment.read_pins(LOCKS[item.path])
        if pin.name in joint_names and (pin.name, pin.version) not in joint
    ]
    assert moved == []


def test_this_environment_holds_the_locks_pins_and_nothing_else():
    """What `make install` made here came from the lock files only: the training layer (cpu.txt,
    or gpu.txt), dev.txt and, where Ray is installed (`make scale`, `make test`), scale.txt; every
    pin of theirs for this platform and Python at its version, and no package they do not name."""
    installed = environment.installed_versions()
    tags = environment.environment_tags()
    assert tags["environment.lock"] != "none", (
        f"this environment is not a lock's ({tags['environment.lock_differences']}): `make install`"
    )
    paths = [tags["environment.lock"], environment.layer("dev").path]
    if "ray" in installed:
        paths.append(environment.layer("scale").path)
    named = set(NOT_LOCKED)
    for path in paths:
        pins = environment.read_pins(LOCKS[path])
        assert environment.differences(pins, installed) == [], path
        named |= {pin.name for pin in pins}
    assert sorted(set(installed) - named) == [], "installed, but in no lock file installed here"
