"""prepare on tiny synthetic data: shapes, ranges, one-hot, stratification, determinism, checks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages import prepare
from tests.support import synthetic


def run_prepare(n_train: int = 200, n_test: int = 50, *, val_fraction: float = 0.2, seed: int = 7):
    train_images, train_labels = synthetic.make_split(n_train, seed=1)
    test_images, test_labels = synthetic.make_split(n_test, seed=2)
    return prepare.prepare(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        val_fraction=val_fraction,
        seed=seed,
    )


def test_shapes_ranges_and_one_hot():
    splits = run_prepare()
    assert {name: len(split.x) for name, split in splits.items()} == {
        "train": 160,
        "val": 40,
        "test": 50,
    }
    for split in splits.values():
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (28, 28)
        assert split.x.min() >= 0.0 and split.x.max() <= 1.0
        assert split.y.dtype == np.float32 and split.y.shape == (len(split.x), 10)
        np.testing.assert_array_equal(split.y.sum(axis=1), 1.0)
        np.testing.assert_array_equal(split.y.argmax(axis=1), split.labels)


def test_normalize_maps_bytes_to_unit_interval():
    pixels = np.array([[0, 51, 255]], dtype=np.uint8)
    np.testing.assert_allclose(prepare.normalize(pixels), [[0.0, 0.2, 1.0]])


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.5])
def test_validation_split_is_stratified(val_fraction):
    splits = run_prepare(n_train=500, val_fraction=val_fraction)
    train_counts = np.bincount(splits["train"].labels, minlength=10)
    val_counts = np.bincount(splits["val"].labels, minlength=10)
    # 50 images per class: the split keeps the same share of every class.
    np.testing.assert_array_equal(val_counts, np.full(10, round(50 * val_fraction)))
    np.testing.assert_array_equal(train_counts + val_counts, np.full(10, 50))


def test_same_seed_same_split_and_other_seed_differs():
    first, again, other = run_prepare(seed=3), run_prepare(seed=3), run_prepare(seed=4)
    np.testing.assert_array_equal(first["val"].x, again["val"].x)
    assert not np.array_equal(first["val"].x, other["val"].x)


def test_label_outside_classes_is_rejected():
    train_images, train_labels = synthetic.make_split(100, seed=1)
    train_labels[5] = 12
    test_images, test_labels = synthetic.make_split(20, seed=2)
    with pytest.raises(prepare.DataCheckError, match=r"outside 0\.\.9.*\[12\]"):
        prepare.prepare(
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            num_classes=10,
            val_fraction=0.2,
            seed=0,
        )


def test_missing_class_in_test_is_rejected():
    train_images, train_labels = synthetic.make_split(100, seed=1)
    test_images, test_labels = synthetic.make_split(30, seed=2)
    test_labels[test_labels == 3] = 4
    with pytest.raises(prepare.DataCheckError, match=r"test: no image of class\(es\) \[3\]"):
        prepare.prepare(
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            num_classes=10,
            val_fraction=0.2,
            seed=0,
        )


def test_image_shared_by_train_and_test_is_rejected():
    train_images, train_labels = synthetic.make_split(100, seed=1)
    test_images, test_labels = synthetic.make_split(30, seed=2)
    test_images[0] = train_images[17]
    with pytest.raises(prepare.DataCheckError, match=r"1 image.*both the training and the test"):
        prepare.prepare(
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            num_classes=10,
            val_fraction=0.2,
            seed=0,
        )
