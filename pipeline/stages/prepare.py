"""Stage `prepare`: normalize pixels, one-hot the labels, split off a stratified validation set.

Reads the raw IDX files and manifest that `download` wrote and writes `train.npz`, `val.npz`,
`test.npz` (x: float32 (N, 28, 28) in [0, 1]; y: float32 one-hot (N, C); labels: int (N,);
class_names) plus `meta.json` (contracts.PreparedMeta), the split sizes as DVC metrics, the class
counts per split (one CSV each) and a sample grid as DVC plots.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config, contracts, io
from pipeline.data import datasets, idx

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One prepared split: normalized images, one-hot targets and integer labels."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray


class DataCheckError(ValueError):
    """The prepared data breaks one of the checks in `validate`."""


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows; a label outside the classes is an error."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataCheckError(
            f"{int(bad.sum())} label(s) outside 0..{num_classes - 1},"
            f" e.g. {labels[bad][:5].tolist()};"
            " the class names do not match the data (check data.class_names)"
        )
    return np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]


def stratified_split(
    labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with the class proportions of `labels` kept in both parts."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    try:
        train_index, val_index = train_test_split(
            indices, test_size=val_fraction, random_state=seed, stratify=labels
        )
    except ValueError as error:
        raise DataCheckError(
            f"cannot split a stratified validation set of {val_fraction:.0%} off"
            f" {len(labels)} images: {error}"
        ) from None
    return np.sort(train_index), np.sort(val_index)


def _image_hashes(images: np.ndarray) -> set[bytes]:
    return {hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images}


def validate(
    splits: dict[str, Split], *, num_classes: int, raw_train: np.ndarray, raw_test: np.ndarray
) -> None:
    """Fail with a message naming the split and the problem if the prepared data is unusable."""
    for name, split in splits.items():
        count = len(split.x)
        if split.x.shape[1:] != datasets.IMAGE_SHAPE or split.x.dtype != np.float32:
            raise DataCheckError(
                f"{name}: images are {split.x.dtype} {split.x.shape}, expected float32 (N, 28, 28)"
            )
        if split.y.shape != (count, num_classes) or split.labels.shape != (count,):
            raise DataCheckError(
                f"{name}: {count} images but targets {split.y.shape}, labels {split.labels.shape}"
            )
        if not np.isfinite(split.x).all():
            raise DataCheckError(f"{name}: images contain NaN or inf")
        if split.x.min() < 0.0 or split.x.max() > 1.0:
            raise DataCheckError(f"{name}: pixel values outside [0, 1]")
        if not np.array_equal(split.y.argmax(axis=1), split.labels) or not np.allclose(
            split.y.sum(axis=1), 1.0
        ):
            raise DataCheckError(f"{name}: one-hot targets do not match the labels")
        missing = sorted(set(range(num_classes)) - set(np.unique(split.labels).tolist()))
        if missing:
            raise DataCheckError(
                f"{name}: no image of class(es) {missing}; every split needs every class"
                " (more data, or a larger prepare.val_fraction for the validation split)"
            )
    shared = _image_hashes(raw_train) & _image_hashes(raw_test)
    if shared:
        raise DataCheckError(
            f"{len(shared)} image(s) appear in both the training and the test files; test results"
            " would be inflated. Remove the duplicates from the training files"
        )


def prepare(
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    val_fraction: float,
    seed: int,
) -> dict[str, Split]:
    """Normalize, one-hot, split and check; returns the three splits by name."""
    # One-hot first: it rejects labels outside the classes with the clearer message.
    y_train, y_test = one_hot(train_labels, num_classes), one_hot(test_labels, num_classes)
    train_index, val_index = stratified_split(train_labels, val_fraction=val_fraction, seed=seed)
    x_train, x_test = normalize(train_images), normalize(test_images)
    labels_train, labels_test = train_labels.astype(np.int64), test_labels.astype(np.int64)
    splits = {
        "train": Split(x_train[train_index], y_train[train_index], labels_train[train_index]),
        "val": Split(x_train[val_index], y_train[val_index], labels_train[val_index]),
        "test": Split(x_test, y_test, labels_test),
    }
    validate(splits, num_classes=num_classes, raw_train=train_images, raw_test=test_images)
    return splits


def split_sizes(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    """Images per split, for DVC metrics."""
    return {"examples": {name: len(split.labels) for name, split in splits.items()}}


def class_counts(
    splits: dict[str, Split], class_names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """Images per class per split."""
    counts = {}
    for name, split in splits.items():
        per_class = np.bincount(split.labels, minlength=len(class_names))
        counts[name] = {
            class_name: int(count) for class_name, count in zip(class_names, per_class, strict=True)
        }
    return counts


def class_counts_csv(counts: dict[str, int]) -> str:
    """One split's counts as a DVC plot: `class,count` rows."""
    rows = ["class,count"] + [f'"{name}",{count}' for name, count in counts.items()]
    return "\n".join(rows) + "\n"


def sample_grid(split: Split, class_names: tuple[str, ...], *, per_class: int = 8, seed: int = 0):
    """A matplotlib figure with `per_class` random images of each class, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rng = np.random.default_rng(seed)
    figure, axes = pyplot.subplots(
        len(class_names),
        per_class,
        figsize=(per_class * 0.9, len(class_names) * 0.95),
        squeeze=False,
    )
    for row, class_name in enumerate(class_names):
        members = np.flatnonzero(split.labels == row)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(chosen):
                axis.imshow(split.x[chosen[column]], cmap="gray", vmin=0.0, vmax=1.0)
        axes[row][0].set_title(class_name, fontsize=8, loc="left")
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True, help="download's folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the prepared splits")
    parser.add_argument("--metrics", type=Path, required=True, help="split sizes (JSON)")
    parser.add_argument(
        "--class-counts", type=Path, required=True, help="folder for <split>.csv class counts"
    )
    parser.add_argument("--plot", type=Path, required=True, help="sample grid (PNG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    params = config.load(args.params).prepare
    manifest = contracts.RawManifest.read(args.raw / contracts.RawManifest.file_name)
    class_names = manifest.class_names
    raw = {role: idx.read(args.raw / name) for role, name in datasets.FILES.items()}
    splits = prepare(
        **raw, num_classes=len(class_names), val_fraction=params.val_fraction, seed=params.seed
    )

    for name, split in splits.items():
        io.save_npz(
            args.out / f"{name}.npz",
            x=split.x,
            y=split.y,
            labels=split.labels,
            class_names=np.array(class_names),
        )
        log.info(
            "%s: x %s y %s -> %s", name, split.x.shape, split.y.shape, args.out / f"{name}.npz"
        )
    contracts.PreparedMeta(
        dataset=manifest.dataset,
        source=manifest.source,
        class_names=class_names,
        sha256=manifest.sha256,
        counts={name: len(split.labels) for name, split in splits.items()},
        val_fraction=params.val_fraction,
        seed=params.seed,
    ).write(args.out / contracts.PreparedMeta.file_name)
    io.write_json(args.metrics, split_sizes(splits))
    for name, counts in class_counts(splits, class_names).items():
        io.write_bytes(args.class_counts / f"{name}.csv", class_counts_csv(counts).encode())
    io.save_figure(args.plot, sample_grid(splits["train"], class_names))
    log.info("sizes -> %s; class counts -> %s/", args.metrics, args.class_counts)


if __name__ == "__main__":
    main()
