"""What each known dataset is: its four files, where to get them, checksums and class names."""

from __future__ import annotations

from dataclasses import dataclass

# The four files of an MNIST-format dataset, by role. Sources may store each plain or gzipped.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class Dataset:
    """A known dataset: where it lives and how to check what we got."""

    name: str
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    # md5 of each published `.gz` archive, checked for mirror downloads only: Debian re-compresses
    # the files, so local copies are checked by their decompressed content instead.
    archive_md5: dict[str, str]
    # sha256 of the decompressed files, where known; a mismatch means different data.
    content_sha256: dict[str, str]
    system_dir: str
    # Side of the box an object is scaled to fit when serving turns an upload into model input:
    # MNIST scaled each digit to 20x20 inside 28x28; Fashion-MNIST products fill the frame.
    content_size: int = 20
    # Whether every class keeps its meaning when an image is mirrored left-right: a mirrored
    # shirt is a shirt, a mirrored 2 is not a 2. Mirroring (`fit.augment_flip`,
    # `model.test_time_flip`) is on by default only where this holds.
    mirror_symmetric: bool = False


DATASETS = {
    "fashion_mnist": Dataset(
        name="fashion_mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mirrors=(
            "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/fashion-mnist/",
        ),
        archive_md5={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        content_sha256={
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dir="fashion-mnist",
        content_size=28,
        mirror_symmetric=True,
    ),
    "mnist": Dataset(
        name="mnist",
        class_names=tuple(str(digit) for digit in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        archive_md5={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        content_sha256={},
        system_dir="mnist",
    ),
}


def content_size(name: str) -> int:
    """The box serving scales uploads to for dataset `name` (the MNIST default when unknown)."""
    known = DATASETS.get(name)
    return known.content_size if known else Dataset.content_size


def mirror_symmetric(name: str) -> bool:
    """Whether dataset `name`'s classes keep their meaning mirrored; False for unknown ones."""
    known = DATASETS.get(name)
    return known.mirror_symmetric if known else False


def get(name: str) -> Dataset:
    """Return the known dataset called `name`, or fail naming the ones we know."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known: {sorted(DATASETS)}. For another MNIST-format"
            " dataset set data.local_dir (and data.class_names) in params.yaml"
        ) from None
