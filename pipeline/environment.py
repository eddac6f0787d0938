"""The locked environment: the lock files in requirements/, what each holds, and whether the
running Python is one of them.

`make lock` (`python -m pipeline.environment lock`) resolves pyproject.toml with uv: first every
extra the Makefile installs, together (JOINT: requirements/constraints.txt), then one file per
install layer (LAYERS) that keeps to those versions, with the sha256 of every file, universal for
Python 3.11-3.13 on every platform (markers say where a pin applies) and naming no package index.
So the layers agree on every package they share, and the bento's serve.txt holds the versions
training used. Each file's header carries a digest of pyproject.toml's requirements, so a
pyproject.toml changed without a relock is caught (`stale_locks`: `make install` stops,
tests/unit/test_lock.py fails). `make install` installs the layers with hashes required; a
training run's tags name the file its environment matches and that file's sha256
(`environment_tags`).

Importing this module does nothing, and it needs only the standard library to import: the
Makefile runs it before anything is installed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOCK_FOLDER = "requirements"
# The oldest Python the resolution must serve; markers split it where newer ones need other pins.
PYTHON_VERSION = "3.11"
STAMP = "# pyproject.toml requirements sha256: "
# MLflow keeps 8,000 characters of a tag value; the differences are cut well before that.
MOST_DIFFERENCES = 20


@dataclass(frozen=True)
class Layer:
    """One lock file: the extras it resolves, with pyproject.toml's own dependencies."""

    name: str
    extras: tuple[str, ...]
    used_by: str

    @property
    def path(self) -> str:
        return f"{LOCK_FOLDER}/{self.name}.txt"


# Every extra the Makefile installs, resolved together first, into a file that is never
# installed: each layer keeps to its pins (`-c`), so any layers installed together agree, and a
# layer resolved alone cannot take a version another layer cannot live with.
JOINT = Layer(
    "constraints", ("cpu", "gpu", "dev", "scale"), "what every layer keeps to; never installed"
)
LAYERS = (
    Layer("cpu", ("cpu",), "training with TensorFlow for the CPU: `make repro`, `make install`"),
    Layer("gpu", ("gpu",), "training with TensorFlow for CUDA: GPU=1, instead of cpu"),
    Layer("dev", ("dev",), "tests, lint, the docs site: `make install`, on top of cpu or gpu"),
    Layer("scale", ("scale",), "Ray for sweeps: `make test` and `make scale`, on top of dev"),
    Layer("serve", ("serve",), "the bento: bentofile.yaml"),
    Layer("serve-gpu", ("serve-gpu",), "the bento for NVIDIA GPUs: bentofile.gpu.yaml"),
)
# The layers a training environment is built on; a run names the one its packages match.
TRAINING = ("cpu", "gpu")


def layer(name: str) -> Layer:
    [found] = [item for item in LAYERS if item.name == name]
    return found


@dataclass(frozen=True)
class Pin:
    """One line of a lock file: `name==version ; marker` and its hashes."""

    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_digest(project: Mapping) -> str:
    """sha256 of what pyproject.toml's [project] table asks to install (its Python, dependencies
    and extras), blind to comments and layout."""
    asked = {key: project.get(key) for key in ("requires-python", "dependencies")}
    asked["optional-dependencies"] = project.get("optional-dependencies", {})
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def project_table(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def stamp_of(text: str) -> str | None:
    """The pyproject.toml digest a lock file was made from (None if it has none)."""
    for line in text.splitlines():
        if line.startswith(STAMP):
            return line.removeprefix(STAMP).strip()
    return None


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(?:;\s*(.+?))?\s*$")


def read_pins(text: str) -> list[Pin]:
    """The pins of a lock file in uv's requirements format; ValueError on any other line."""
    pins = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *hashes = line.split(" --hash=")
        match = PIN.match(requirement)
        if match is None:
            raise ValueError(f"not an exact pin: {line[:120]!r}")
        name, version, marker = match.groups()
        pins.append(Pin(canonical(name), version, marker, tuple(h.strip() for h in hashes)))
    return pins


def applies(pin: Pin) -> bool:
    """Whether `pin` is for this platform and Python."""
    return pin.marker is None or marker_holds(pin.marker)


@functools.cache
def marker_holds(marker: str) -> bool:
    """Whether an environment marker is true here (a lock repeats a few dozen of them)."""
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def installed_versions() -> dict[str, str]:
    """{distribution: version} of everything installed in this Python, as imports find them.

    From the `<name>-<version>.dist-info` folder names, which the wheel format fixes: reading
    every METADATA file through importlib.metadata takes half a second here.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        folder = Path(entry or ".")
        if not folder.is_dir():
            continue
        for info in folder.glob("*.dist-info"):
            name, _, version = info.name.removesuffix(".dist-info").partition("-")
            found.setdefault(canonical(name), version)
    return found


def differences(pins: Sequence[Pin], installed: Mapping[str, str]) -> list[str]:
    """Where `installed` is not the lock: `name installed (locked version)` for each pin that
    applies here."""
    found = []
    for pin in pins:
        if applies(pin) and installed.get(pin.name) != pin.version:
            found.append(f"{pin.name} {installed.get(pin.name, 'missing')} (locked {pin.version})")
    return found


def code_root() -> Path:
    """The checkout this code runs from (a DVC experiment copy has its own requirements/)."""
    return Path(__file__).resolve().parents[1]


def environment_tags(
    root: Path | None = None, installed: Callable[[], Mapping[str, str]] = installed_versions
) -> dict[str, str]:
    """MLflow tags for this Python: `environment.lock`, the training lock (requirements/cpu.txt
    or gpu.txt) every pin of which for this platform is installed at its version, and
    `environment.lock_sha256`, that file's sha256; where none matches, `none` and the first
    differences from the closest one."""
    root = root or code_root()
    versions = installed()
    tags = {"environment.python": ".".join(map(str, sys.version_info[:3]))}
    closest: tuple[str, list[str]] | None = None
    for name in TRAINING:
        path = root / layer(name).path
        if not path.is_file():
            continue
        content = path.read_bytes()
        found = differences(read_pins(content.decode()), versions)
        if not found:
            sha256 = hashlib.sha256(content).hexdigest()
            return tags | {"environment.lock": layer(name).path, "environment.lock_sha256": sha256}
        if closest is None or len(found) < len(closest[1]):
            closest = (layer(name).path, found)
    tags["environment.lock"] = "none"
    if closest is not None:
        shown = "; ".join(closest[1][:MOST_DIFFERENCES])
        more = len(closest[1]) - MOST_DIFFERENCES
        tags["environment.lock_differences"] = f"{closest[0]}: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
    return tags


def stale_locks(root: Path) -> list[str]:
    """The lock files that are missing or were not made from pyproject.toml as it is now."""
    digest = requirements_digest(project_table(root))
    return [
        item.path
        for item in (JOINT, *LAYERS)
        if not (root / item.path).is_file() or stamp_of((root / item.path).read_text()) != digest
    ]


def compile_command(uv: str, item: Layer, *, upgrade: bool) -> list[str]:
    """`uv pip compile` of one file. An existing file is uv's preference: without `upgrade`, a
    relock moves only the pins pyproject.toml's change needs moved. The layers keep to the joint
    resolution and carry every file's hash; the joint file, never installed, carries none."""
    command = [uv, "pip", "compile", "pyproject.toml", "--universal", "--quiet", "--no-header"]
    command += ["--python-version", PYTHON_VERSION, "--output-file", item.path]
    for extra in item.extras:
        command += ["--extra", extra]
    if item is JOINT:
        return command + (["--upgrade"] if upgrade else [])
    return [*command, "--generate-hashes", "--constraint", JOINT.path]


def header(item: Layer, digest: str) -> str:
    return (
        f"# {item.path}: {item.used_by}.\n"
        f"# Made by `make lock` from pyproject.toml, extras {', '.join(item.extras)}: do not edit\n"
        "# (docs/development.md, 'Locked installs').\n"
        f"{STAMP}{digest}\n"
    )


def lock(root: Path, uv: str, *, upgrade: bool = False) -> None:
    """Write the joint resolution, then every layer's lock file, stamped with pyproject.toml's
    digest."""
    digest = requirements_digest(project_table(root))
    (root / LOCK_FOLDER).mkdir(exist_ok=True)
    for item in (JOINT, *LAYERS):
        subprocess.run(compile_command(uv, item, upgrade=upgrade), cwd=root, check=True)
        path = root / item.path
        body = path.read_text()
        if "://" in body:
            raise ValueError(f"{item.path} names a URL (an index or a link): keep it out")
        path.write_text(header(item, digest) + body)
        print(f"{item.path}: {len(read_pins(body))} pins, {len(body) // 1024} KiB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="lock: write requirements/ from pyproject.toml; check: exit 1 (and say so) "
        "where a lock file was not made from pyproject.toml as it is now."
    )
    parser.add_argument("action", choices=["lock", "check"])
    parser.add_argument("--upgrade", action="store_true", help="newest versions pyproject allows")
    parser.add_argument("--uv", default=str(Path(sys.executable).parent / "uv"))
    parser.add_argument("--root", type=Path, default=code_root(), help="the checkout")
    args = parser.parse_args(argv)
    if args.action == "lock":
        lock(args.root, args.uv, upgrade=args.upgrade)
        return 0
    stale = stale_locks(args.root)
    if stale:
        print(
            f"pyproject.toml's requirements changed since {', '.join(stale)} were made: run "
            "`make lock` (docs/development.md)",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
