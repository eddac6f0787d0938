"""A BentoML model store under a test folder, filled the way `serving.tools.package` fills one."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving import preprocess


@contextlib.contextmanager
def bentoml_home(home: Path) -> Iterator[Path]:
    """Point BentoML at a store under `home`, in this process and in the processes it starts.

    BentoML reads BENTOML_HOME once per process and caches the store, so once any test has used
    a store the variable alone does not move it; the container's providers are patched too.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    (home / "models").mkdir(parents=True, exist_ok=True)
    with (
        pytest.MonkeyPatch.context() as patch,
        BentoMLContainer.bentoml_home.patch(str(home)),
        BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))),
    ):
        patch.setenv("BENTOML_HOME", str(home))
        yield home


def store_model(model, tag: str, *, class_names: tuple[str, ...], version: str = "1") -> str:
    """Save a Keras model into the current BentoML store the way `serving.tools.package` lays
    it out: its ONNX export as the served file."""
    name = tag.split(":")[0]
    metadata = {
        "registered_model": name,
        "version": version,
        "class_names": list(class_names),
        "content_size": preprocess.MNIST_CONTENT_SIZE,
    }
    return store_keras_model(model, tag, metadata=metadata)


def store_keras_model(model, tag: str, *, metadata: dict) -> str:
    """Save a Keras model's ONNX export into the current BentoML store as `tag` with `metadata`
    (which `serving.model.ServedModel` reads: registered_model, version, class_names,
    content_size...) and the file's description, as `serving.tools.package` does."""
    import tempfile

    import bentoml

    from pipeline.model import onnx_export

    with tempfile.TemporaryDirectory() as scratch:
        path = onnx_export.export(model, Path(scratch) / onnx_export.FP32_FILE)
        # The probe evaluate registers, on images of the model's input shape.
        images = np.random.default_rng(0).random((onnx_export.PROBE_IMAGES, 28, 28))
        probe = onnx_export.write_probe(path, images, int8=False)
        onnx = {
            "served_file": path.name,
            "precision": "fp32",
            "sha256": onnx_export.sha256(path),
            "files": [path.name, probe.name],
            "probe": probe.name,
        }
        with bentoml.models.create(
            tag, module="serving.service", metadata=metadata | {"onnx": onnx}
        ) as stored:
            for file in (path, probe):
                shutil.copyfile(file, stored.path_of(file.name))
    return tag
