"""The CPU and GPU bentofiles build the same bento but for the TensorFlow build they install,
and that is the one the matching pyproject extra names."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def bentofile(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def pinned(text: str) -> tuple[str, frozenset, str]:
    """A requirement's name, extras and versions; the image is Linux x86_64, so no markers."""
    requirement = Requirement(text)
    return requirement.name, frozenset(requirement.extras), str(requirement.specifier)


def tensorflow_of(packages: list[str]) -> tuple[list[str], list[str]]:
    """(the TensorFlow requirements, the other packages)."""
    tensorflow = [text for text in packages if Requirement(text).name.startswith("tensorflow")]
    return tensorflow, [text for text in packages if text not in tensorflow]


def test_the_gpu_bentofile_differs_only_in_its_tensorflow_build():
    cpu, gpu = bentofile("bentofile.yaml"), bentofile("bentofile.gpu.yaml")
    cpu_tensorflow, cpu_rest = tensorflow_of(cpu["python"].pop("packages"))
    gpu_tensorflow, gpu_rest = tensorflow_of(gpu["python"].pop("packages"))
    assert cpu == gpu and cpu_rest == gpu_rest
    assert [pinned(text) for text in cpu_tensorflow] == [pinned(EXTRAS["cpu"][0])]
    assert [pinned(text) for text in gpu_tensorflow] == [pinned(EXTRAS["gpu"][0])]
    assert pinned(gpu_tensorflow[0])[:2] == ("tensorflow", {"and-cuda"})
