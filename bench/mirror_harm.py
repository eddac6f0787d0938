"""What mirroring costs on data whose classes are not mirror-safe: the default variants, trained
as params.yaml says, with mirroring on and off, on a "chiral" Fashion-MNIST.

    python bench/mirror_harm.py [--train-images 20000] [--epochs-scale 0.25] [--variants mlp cnn]

The chiral set is Fashion-MNIST with one class pair made mirror images of each other: `Bag` is
dropped, and half of the `Sneaker` images (99.4% of which face the same way) are mirrored and
labelled as a new class, `Sneaker (mirrored)`, in its place; the other classes stay as they
are. With mirroring (`fit.augment_flip` and `model.test_time_flip` both on, the variants'
settings on Fashion-MNIST), the two sneaker classes cannot be told apart; without, they can.
Prints, per variant and setting: test accuracy overall, on the sneaker pair and on the other
eight classes, and the seconds it took. The epochs are the variants' own times `--epochs-scale`
(at least 1), so the cosine schedules keep their shape; a full-size run is `--train-images
54000 --epochs-scale 1`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import config
from pipeline.data import datasets, idx

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
SNEAKER, BAG = 7, 8


def load(role: str) -> np.ndarray:
    return idx.read(SYSTEM / (datasets.FILES[role] + ".gz"))


def chiral(images: np.ndarray, labels: np.ndarray, *, seed: int):
    """Images in [0, 1] and labels of the chiral set: no bags, every other sneaker (in a seeded
    random order) mirrored and labelled as the bags were."""
    keep = labels != BAG
    images, labels = images[keep].astype(np.float32) / 255, labels[keep].copy()
    sneakers = np.flatnonzero(labels == SNEAKER)
    mirrored = np.random.default_rng(seed).permutation(sneakers)[: len(sneakers) // 2]
    images[mirrored] = images[mirrored, :, ::-1]
    labels[mirrored] = BAG
    return images, labels


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels]


def with_mirroring(variant: config.VariantConfig, on: bool, scale: float):
    epochs = max(1, math.ceil(variant.fit.epochs * scale))
    return dataclasses.replace(
        variant,
        model=dataclasses.replace(variant.model, test_time_flip=on),
        fit=dataclasses.replace(variant.fit, augment_flip=on, epochs=epochs),
    )


def accuracies(model, x_test, labels) -> dict[str, float]:
    predictions = np.asarray(model.predict(x_test, batch_size=1024, verbose=0)).argmax(axis=1)
    right = predictions == labels
    pair = np.isin(labels, (SNEAKER, BAG))
    return {"all": right.mean(), "sneaker pair": right[pair].mean(), "other 8": right[~pair].mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--epochs-scale", type=float, default=0.25)
    parser.add_argument("--variants", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.model import devices
    from pipeline.stages import train

    devices.import_tensorflow()
    params = config.load(args.params)
    x, labels = chiral(load("train_images"), load("train_labels"), seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(x))[: args.train_images]
    cut = len(order) // 10
    val, fit = order[:cut], order[cut:]
    x_test, labels_test = chiral(load("test_images"), load("test_labels"), seed=args.seed + 1)
    print(
        f"chiral Fashion-MNIST: {len(fit)} training, {len(val)} validation, {len(x_test)} test"
        f" images; epochs x{args.epochs_scale}"
    )
    header = ("variant", "mirroring", "epochs", "test", "pair", "other 8", "s")
    print("{:8} {:9} {:>6} {:>7} {:>7} {:>7} {:>6}".format(*header))
    for name in args.variants:
        for on in (True, False):
            variant = with_mirroring(params.train.models[name], on, args.epochs_scale)
            started = time.perf_counter()
            trained = train.train(
                variant_config=variant,
                x_train=x[fit],
                y_train=one_hot(labels[fit]),
                x_val=x[val],
                y_val=one_hot(labels[val]),
            )
            seconds = time.perf_counter() - started
            scores = accuracies(trained.model, x_test, labels_test)
            print(
                f"{name:8} {'on' if on else 'off':9} {variant.fit.epochs:6d}"
                f" {scores['all']:7.4f} {scores['sneaker pair']:7.4f} {scores['other 8']:7.4f}"
                f" {seconds:6.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
