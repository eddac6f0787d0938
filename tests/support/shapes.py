"""Drawings a tiny model can tell apart after the service's preprocessing, and image bytes.

The service crops, scales and centres every upload the way MNIST was made, so an image's class must
survive that. `tests.support.synthetic` codes the class in the position of a bright square, which
the crop throws away; the drawings here differ in shape (a tall bar, a wide bar, a block, a frame, a
cross), which the preprocessing keeps, so a model built on them answers uploads meaningfully.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from serving import preprocess

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
