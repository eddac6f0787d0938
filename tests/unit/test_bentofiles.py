"""The CPU and GPU bentofiles build the same bento but for the onnxruntime build they install,
and they install what pyproject.toml says the service needs: its `dependencies` and `serve`
extra, and no TensorFlow, Keras or MLflow."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def bentofile(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def pinned(text: str) -> tuple[str, frozenset, str]:
    """A requirement's name, extras and versions; the image is Linux x86_64, so no markers."""
    requirement = Requirement(text)
    return requirement.name, frozenset(requirement.extras), str(requirement.specifier)


def runtime_of(packages: list[str]) -> tuple[list[str], list[str]]:
    """(the onnxruntime requirements, the other packages)."""
    runtime = [text for text in packages if Requirement(text).name.startswith("onnxruntime")]
    return runtime, [text for text in packages if text not in runtime]


def test_the_gpu_bentofile_differs_only_in_its_onnxruntime_build():
    cpu, gpu = bentofile("bentofile.yaml"), bentofile("bentofile.gpu.yaml")
    cpu_runtime, cpu_rest = runtime_of(cpu["python"].pop("packages"))
    gpu_runtime, gpu_rest = runtime_of(gpu["python"].pop("packages"))
    assert cpu == gpu and cpu_rest == gpu_rest
    [(name, extras, versions)] = [pinned(text) for text in gpu_runtime]
    assert (name, extras) == ("onnxruntime-gpu", {"cuda", "cudnn"})
    assert [pinned(text) for text in cpu_runtime] == [("onnxruntime", frozenset(), versions)]


def test_the_bento_installs_what_the_service_needs_and_no_training_side():
    packages = bentofile("bentofile.yaml")["python"]["packages"]
    service = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["serve"]
    assert sorted(map(pinned, packages)) == sorted(map(pinned, service))
    names = {Requirement(text).name for text in packages}
    assert not {name for name in names if name.startswith(("tensorflow", "keras", "mlflow"))}
    # The bento packs only the service's code: no pipeline module, which needs TensorFlow.
    assert not [path for path in bentofile("bentofile.yaml")["include"] if "pipeline" in path]
