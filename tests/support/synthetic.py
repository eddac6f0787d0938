"""Tiny synthetic MNIST-format datasets that a model can learn, made inside the tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import contracts
from pipeline.data import datasets, idx

CLASS_NAMES = tuple(f"class_{index}" for index in range(10))


def make_images(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Light-on-dark 28x28 uint8 images whose bright square's position encodes the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = 3 + 12 * (label // 5), 2 + 5 * (label % 5)
        jitter_row, jitter_col = rng.integers(-1, 2, size=2)
        top, left = row + jitter_row, col + jitter_col
        image[top : top + 8, left : left + 4] = rng.integers(180, 256, size=(8, 4), dtype=np.uint8)
    return images


def make_split(count: int, *, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """`count` images with balanced labels (every class present when count >= num_classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.uint8)
    return make_images(labels, seed=seed + 1), labels


def write_dataset(
    folder: Path, *, n_train: int = 200, n_test: int = 50, gz: bool = True, seed: int = 0
) -> dict[str, Path]:
    """Write the four IDX files of a synthetic dataset into `folder`; return their paths by role."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_split(n_train, seed=seed)
    test_images, test_labels = make_split(n_test, seed=seed + 100)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    paths = {}
    for role, array in arrays.items():
        path = folder / (datasets.FILES[role] + (".gz" if gz else ""))
        idx.write(path, array)
        paths[role] = path
    return paths


def write_raw(
    folder: Path, *, n_train: int = 200, n_test: int = 50, dataset: str = "synthetic"
) -> contracts.RawManifest:
    """A `download` output folder: the four plain IDX files and the manifest describing them."""
    paths = write_dataset(folder, n_train=n_train, n_test=n_test, gz=False)
    manifest = contracts.RawManifest(
        dataset=dataset,
        class_names=CLASS_NAMES,
        source=contracts.Source(kind="local_dir", location=str(folder)),
        tried=(),
        files={
            role: contracts.RawFile(
                file=path.name,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                shape=idx.read(path).shape,
            )
            for role, path in paths.items()
        },
        counts={"train": n_train, "test": n_test},
    )
    manifest.write(folder / contracts.RawManifest.file_name)
    return manifest
