"""The CPU and GPU bentofiles build the same bento but for the onnxruntime build they install,
and they install what pyproject.toml says the service needs, locked: its `dependencies` and
`serve` extra (or `serve-gpu`), at the versions training used, and no TensorFlow, Keras or
MLflow."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import environment

REPO = Path(__file__).resolve().parents[2]


def bentofile(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def versions(path: str) -> dict[str, set[str]]:
    """{package: its versions} in a lock file (a package may have one per Python version)."""
    found: dict[str, set[str]] = {}
    for pin in environment.read_pins((REPO / path).read_text()):
        found.setdefault(pin.name, set()).add(pin.version)
    return found


def test_each_bentofile_installs_its_lock_file_as_it_is():
    for name, layer in (("bentofile.yaml", "serve"), ("bentofile.gpu.yaml", "serve-gpu")):
        python = bentofile(name)["python"]
        assert python["requirements_txt"] == environment.layer(layer).path
        # BentoML would otherwise resolve the lock again, against whatever index it finds.
        assert python["lock_packages"] is False
        assert "packages" not in python


def test_the_gpu_bentofile_differs_only_in_its_onnxruntime_build():
    cpu, gpu = bentofile("bentofile.yaml"), bentofile("bentofile.gpu.yaml")
    assert cpu["python"].pop("requirements_txt") != gpu["python"].pop("requirements_txt")
    assert cpu == gpu
    assert environment.layer("serve").extras == ("serve",)
    assert environment.layer("serve-gpu").extras == ("serve-gpu",)
    cpu_pins, gpu_pins = versions("requirements/serve.txt"), versions("requirements/serve-gpu.txt")
    assert "onnxruntime" in cpu_pins and "onnxruntime" not in gpu_pins
    assert "onnxruntime-gpu" in gpu_pins and "onnxruntime-gpu" not in cpu_pins
    # Every package both install (all but onnxruntime's own) at the same versions.
    shared = set(cpu_pins) & set(gpu_pins)
    assert {name: cpu_pins[name] for name in shared} == {name: gpu_pins[name] for name in shared}
    assert set(cpu_pins) - shared == {"onnxruntime"}


def test_the_bento_installs_the_versions_training_used_and_no_training_side():
    serve, training = versions("requirements/serve.txt"), versions("requirements/cpu.txt")
    assert {"bentoml", "onnxruntime", "numpy", "pillow"} <= set(serve)
    assert {name: serve[name] for name in serve} == {name: training[name] for name in serve}
    for path in ("requirements/serve.txt", "requirements/serve-gpu.txt"):
        names = set(versions(path))
        assert not {name for name in names if name.startswith(("tensorflow", "keras", "mlflow"))}
    # The bento packs only the service's code: no pipeline module, which needs TensorFlow.
    assert not [path for path in bentofile("bentofile.yaml")["include"] if "pipeline" in path]
