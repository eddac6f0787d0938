"""The service under test: a shape model in a BentoML store, served in-process and for real.

`client` runs a test twice: through `Classifier.to_asgi()` in this process, and (slow) against a
real `bentoml serve` subprocess with the same model and limits.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.support import bento, servers, shapes

TAG = "shapes:v1"
LIMITS = {
    "MAX_BODY_BYTES": 2 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 1000 * 1000,
    "MAX_IMAGES": 4,
    "MAX_BATCH_ITEMS": 16,
}


@dataclass(frozen=True)
class ShapeStore:
    """A BentoML store holding the shape model, and held-out model inputs with their labels."""

    home: Path
    tag: str
    model: Any
    images: np.ndarray
    labels: np.ndarray

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(images.astype(np.float32), training=False))

    def environment(self, **extra: str) -> dict[str, str]:
        """What `bentoml serve` needs to serve this store's model under the test limits."""
        limits = {name: str(value) for name, value in LIMITS.items()}
        return {"BENTOML_HOME": str(self.home), "BENTO_MODEL": self.tag} | limits | extra


@pytest.fixture(scope="session")
def shape_store(tmp_path_factory: pytest.TempPathFactory) -> ShapeStore:
    home = tmp_path_factory.mktemp("bentoml")
    model = shapes.shape_model()
    images, labels = shapes.shape_dataset(12, seed=1)
    with bento.bentoml_home(home):
        bento.store_model(model, TAG, class_names=shapes.SHAPES)
    return ShapeStore(home, TAG, model, images, labels)


@pytest.fixture(scope="session")
def asgi_client(shape_store: ShapeStore) -> Iterator[TestClient]:
    """The service app in this process. `serving.service` reads its model tag when imported, so
    it is imported here with the test's environment and removed from sys.modules afterwards."""
    import serving

    previous = sys.modules.pop("serving.service", None)
    try:
        with bento.bentoml_home(shape_store.home), pytest.MonkeyPatch.context() as patch:
            for name, value in shape_store.environment().items():
                patch.setenv(name, value)
            service = importlib.import_module("serving.service")
            with TestClient(service.Classifier.to_asgi()) as test_client:
                yield test_client
    finally:
        # Other tests get the module as it was, not one bound to this test's store and limits.
        sys.modules.pop("serving.service", None)
        if previous is None:
            vars(serving).pop("service", None)
        else:
            sys.modules["serving.service"] = previous
            serving.service = previous


@pytest.fixture(scope="session")
def served(shape_store: ShapeStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `bentoml serve` of the shape model with the test limits (two workers)."""
    log = tmp_path_factory.mktemp("served") / "serve.log"
    environment = shape_store.environment(SERVING_WORKERS="2")
    with servers.bentoml_serve(environment, log=log) as server:
        server.wait_ready("/readyz", timeout=120)
        yield server


@pytest.fixture(scope="session", params=["asgi", pytest.param("server", marks=pytest.mark.slow)])
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The same requests in-process (asgi) and over HTTP to a real server (slow)."""
    if request.param == "asgi":
        yield request.getfixturevalue("asgi_client")
        return
    server = request.getfixturevalue("served")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
