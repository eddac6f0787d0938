"""The service under test: a shape model in a BentoML store, served in-process and for real.

`client` runs a test twice: through `Classifier.to_asgi()` in this process, and (slow) against a
real `bentoml serve` subprocess with the same model and limits.
"""

from __future__ import annotations

import contextlib
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
    # Smaller than the batches the tests send, so their answers come through chunked calls.
    "BATCH_CHUNK_ITEMS": 5,
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
def asgi_monitor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the in-process service's watch writes (MONITOR_DIR)."""
    return tmp_path_factory.mktemp("asgi-monitoring")


@pytest.fixture(scope="session")
def asgi_client(shape_store: ShapeStore, asgi_monitor_dir: Path) -> Iterator[TestClient]:
    """The service app in this process. `serving.service` reads its model tag when imported, so
    it is imported here with the test's environment and removed from sys.modules afterwards."""
    import serving

    previous = sys.modules.pop("serving.service", None)
    try:
        with bento.bentoml_home(shape_store.home), contextlib.ExitStack() as running:
            # The service reads its environment when imported and when it starts (the client's
            # lifespan), never later: the test limits are set for just that, so the processes
            # other tests start (real servers, stages) do not inherit them.
            with pytest.MonkeyPatch.context() as patch:
                environment = shape_store.environment(MONITOR_DIR=str(asgi_monitor_dir))
                for name, value in environment.items():
                    patch.setenv(name, value)
                service = importlib.import_module("serving.service")
                test_client = running.enter_context(TestClient(service.Classifier.to_asgi()))
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
    folder = tmp_path_factory.mktemp("served")
    environment = shape_store.environment(
        SERVING_WORKERS="2", MONITOR_DIR=str(folder / "monitoring")
    )
    log = folder / "serve.log"
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


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_TAG = "fashion-mnist-classifier:1"


@dataclass(frozen=True)
class FashionStore:
    """A small Fashion-MNIST model trained here, in a BentoML store, and the test split."""

    home: Path
    tag: str
    class_names: tuple[str, ...]
    test_images: np.ndarray  # uint8 (10000, 28, 28)
    test_npz: Path  # the test split as the `prepare` stage writes it
    test_accuracy: float

    def environment(self, **extra: str) -> dict[str, str]:
        return {"BENTOML_HOME": str(self.home), "BENTO_MODEL": self.tag} | extra


def _fashion_split(kind: str) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.data import idx

    images = idx.read(FASHION_DIR / f"{kind}-images-idx3-ubyte.gz")
    labels = idx.read(FASHION_DIR / f"{kind}-labels-idx1-ubyte.gz")
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def fashion_store(tmp_path_factory: pytest.TempPathFactory) -> FashionStore:
    """An MLP fitted for a few seconds on 6,000 Fashion-MNIST training images (about 80% on the
    test split), stored as `serving.tools.package` stores the champion, with its test accuracy."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent (`make data` installs dataset-fashion-mnist)")
    import keras

    from pipeline.data import datasets

    keras.utils.set_random_seed(0)
    train_images, train_labels = _fashion_split("train")
    test_images, test_labels = _fashion_split("t10k")
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train_images[:6000] / 255.0, train_labels[:6000], epochs=4, batch_size=64, verbose=0)
    test_x = (test_images / 255.0).astype(np.float32)
    accuracy = float((model.predict(test_x, verbose=0).argmax(axis=1) == test_labels).mean())
    folder = tmp_path_factory.mktemp("fashion")
    class_names = datasets.get("fashion_mnist").class_names
    metadata = {
        "registered_model": "fashion-mnist-classifier",
        "version": "1",
        "dataset": "fashion_mnist",
        "class_names": list(class_names),
        "content_size": datasets.content_size("fashion_mnist"),
        "metrics": {"test_accuracy": accuracy},
    }
    with bento.bentoml_home(folder / "bentoml"):
        bento.store_keras_model(model, FASHION_TAG, metadata=metadata)
    test_npz = folder / "test.npz"
    np.savez(test_npz, x=test_x, labels=test_labels)
    return FashionStore(
        folder / "bentoml", FASHION_TAG, class_names, test_images, test_npz, accuracy
    )


@pytest.fixture(scope="session")
def fashion_monitor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the real Fashion service's watch writes (MONITOR_DIR)."""
    return tmp_path_factory.mktemp("fashion-monitoring")


@pytest.fixture(scope="session")
def fashion_served(
    fashion_store: FashionStore, fashion_monitor_dir: Path, tmp_path_factory
) -> Iterator[servers.Server]:
    """A real `bentoml serve` of the Fashion model: two workers, the watch writing to
    `fashion_monitor_dir` with every input's pixels, a 1 MiB body limit."""
    environment = fashion_store.environment(
        SERVING_WORKERS="2",
        MONITOR_DIR=str(fashion_monitor_dir),
        MAX_BODY_BYTES=str(1024 * 1024),
        MONITOR_PIXEL_RATE="1",
    )
    log = tmp_path_factory.mktemp("fashion-served") / "serve.log"
    with servers.bentoml_serve(environment, log=log) as server:
        server.wait_ready("/readyz", timeout=120)
        yield server
