"""Tiny models, model stores, images and servers for the serving tests, all made inside the tests.

The service crops, scales and centres every upload the way MNIST was made, so an image's class must
survive that. `tests.synthetic` codes the class in the position of a bright square, which the crop
throws away; the drawings here differ in shape (a tall bar, a wide bar, a block, a frame, a cross),
which the preprocessing keeps, so a model trained on them answers uploads meaningfully.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serving import preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("bar", "slab", "block", "frame", "cross")


def draw_shape(
    label: int, *, rng: np.random.Generator, ink: int | None = None, paper: int | None = None
) -> Image.Image:
    """A dark-on-light L drawing of shape `label`, at a random size and place, like an upload."""
    side = int(rng.integers(40, 97))
    ink = int(rng.integers(0, 60)) if ink is None else ink
    paper = int(rng.integers(200, 256)) if paper is None else paper
    image = Image.new("L", (side, side), paper)
    draw = ImageDraw.Draw(image)
    length = int(rng.integers(int(side * 0.45), int(side * 0.8)))
    thickness = max(3, length // 4)
    # Keep a margin free of ink, since the preprocessing reads the background off the border.
    top, left = (int(value) for value in rng.integers(3, side - length - 3, size=2))
    bottom, right = top + length - 1, left + length - 1
    middle_row, middle_column = top + length // 2, left + length // 2
    name = SHAPES[label]
    if name == "bar":
        draw.rectangle(
            (middle_column - thickness // 2, top, middle_column + thickness // 2, bottom), ink
        )
    elif name == "slab":
        draw.rectangle((left, middle_row - thickness // 2, right, middle_row + thickness // 2), ink)
    elif name == "block":
        draw.rectangle((left, top, right, bottom), ink)
    elif name == "frame":
        draw.rectangle((left, top, right, bottom), outline=ink, width=max(2, length // 7))
    else:
        draw.rectangle(
            (middle_column - thickness // 2, top, middle_column + thickness // 2, bottom), ink
        )
        draw.rectangle((left, middle_row - thickness // 2, right, middle_row + thickness // 2), ink)
    return image


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """The dark-on-light L drawing in `mode`: L as is, RGB as blue ink on cream paper, RGBA as ink
    on a transparent canvas that stores black under the transparency, as a browser canvas does."""
    if mode == "L":
        return image
    if mode == "RGB":
        paper = np.asarray(image, dtype=np.float32)[..., np.newaxis] / 255.0
        ink, cream = np.array([40, 40, 120]), np.array([245, 240, 230])
        return Image.fromarray((ink + (cream - ink) * paper).astype(np.uint8), mode="RGB")
    if mode == "RGBA":
        alpha = Image.eval(image, lambda value: 255 - value)
        return Image.merge("RGBA", (*Image.new("RGB", image.size, (0, 0, 0)).split(), alpha))
    raise ValueError(f"unknown mode {mode!r}")


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    """The bytes of `image` saved in `image_format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def shape_dataset(count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` drawings as the service's preprocessing turns them into model input, and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(SHAPES))
    images = np.stack(
        [preprocess.to_model_input(draw_shape(int(label), rng=rng)) for label in labels]
    )
    return images, labels


def tiny_model(classes: int):
    """An untrained Flatten + Dense softmax Keras model over 28x28 inputs."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def shape_model(*, count: int = 300, seed: int = 0, sharpness: float = 0.1):
    """A tiny model that tells the shapes apart after the service's preprocessing.

    It is a nearest-centroid classifier written into the weights of `tiny_model`'s Dense layer:
    softmax(sharpness * (x . c_k - |c_k|^2 / 2)) picks the class whose mean image c_k is nearest.
    That takes milliseconds where `model.fit` takes seconds, and it is right on every held-out
    drawing; `sharpness` keeps the probabilities confident without saturating them at 1.
    """
    images, labels = shape_dataset(count, seed=seed)
    flat = images.reshape(len(images), -1).astype(np.float64)
    centroids = np.stack([flat[labels == label].mean(axis=0) for label in range(len(SHAPES))])
    model = tiny_model(len(SHAPES))
    model.layers[-1].set_weights(
        [
            (sharpness * centroids.T).astype(np.float32),
            (-sharpness * (centroids**2).sum(axis=1) / 2).astype(np.float32),
        ]
    )
    return model


def png_of_size(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, streamed so a huge one stays small on disk and in memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    rows_per_piece = max(1, 2**22 // len(row))
    data = b"".join(
        compressor.compress(row * min(rows_per_piece, height - start))
        for start in range(0, height, rows_per_piece)
    )
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", data + compressor.flush())
        + chunk(b"IEND", b"")
    )


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
    """Save a Keras model into the current BentoML store the way `serving.package` lays it out."""
    import bentoml

    name = tag.split(":")[0]
    metadata = {
        "registered_model": name,
        "version": version,
        "class_names": list(class_names),
        "content_size": preprocess.MNIST_CONTENT_SIZE,
    }
    with bentoml.models.create(tag, module="serving.service", metadata=metadata) as stored:
        model.save(stored.path_of("model.keras"))
    return tag


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A `bentoml serve` subprocess in a session of its own, with its output in a file."""

    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        """Stop the whole process group: the arbiter and its workers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Workers may outlive an arbiter that died on its own; the group is ours either way.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout)


@contextlib.contextmanager
def bentoml_serve(
    environment: Mapping[str, str], *, log: Path, cwd: Path = REPO_ROOT
) -> Iterator[Server]:
    """Run `bentoml serve serving.service:Classifier` (from `cwd`) on a free local port; always
    stop it."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ) | dict(environment)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "serving.service:Classifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        yield server
    finally:
        server.stop()


def wait_until_ready(server: Server, *, timeout: float) -> float:
    """Seconds until GET /readyz answers 200; fails with the server's output if it never does."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.process.poll() is not None:
            pytest.fail(
                f"bentoml serve exited with {server.process.returncode} before it was ready:\n"
                + server.output()[-5000:]
            )
        # /readyz does not answer at all while the service starts, so each try has a deadline.
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.25)
    pytest.fail(f"bentoml serve not ready after {timeout:.0f} s:\n" + server.output()[-5000:])
