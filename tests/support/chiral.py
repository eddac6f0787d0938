"""A tiny dataset whose two classes are mirror images of each other: an "L" and a "J".

Mirroring an L gives a J: a model that sees mirrored images under their original labels, or that
answers for an image and its mirror together, cannot tell the two classes apart.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("L", "J")


def letter_l(rng: np.random.Generator) -> np.ndarray:
    """A light "L" on a dark 28x28 background, placed, sized and shaded at random."""
    image = rng.integers(0, 30, size=(28, 28)).astype(np.float32) / 255
    height, width = rng.integers(12, 19), rng.integers(7, 12)
    top, left = rng.integers(3, 28 - height - 2), rng.integers(3, 28 - width - 2)
    ink = rng.uniform(0.7, 1.0)
    image[top : top + height, left : left + 3] = ink
    image[top + height - 3 : top + height, left : left + width] = ink
    return image


def make(count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` (even) images, shape (count, 28, 28) in [0, 1], and labels (0 = L, 1 = J): each
    J is the exact mirror image of the L before it."""
    rng = np.random.default_rng(seed)
    letters = np.stack([letter_l(rng) for _ in range(count // 2)])
    images = np.empty((count, 28, 28), np.float32)
    images[0::2], images[1::2] = letters, letters[:, :, ::-1]
    labels = np.tile(np.array([0, 1], np.uint8), count // 2)
    return images, labels
