"""The served model: a Keras file from the BentoML store, its class names, and its answers."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving import preprocess


@dataclass
class ServedModel:
    """A loaded classifier with what the registry recorded about it (`serving.package`)."""

    info: dict[str, Any]
    class_names: tuple[str, ...]
    content_size: int
    version: str
    name: str
    _infer: Any = field(repr=False, default=None)

    @classmethod
    def load(cls, path: Path, *, info: dict[str, Any], version: str, threads: int) -> ServedModel:
        """Load the Keras file at `path`; ValueError when it does not match its metadata."""
        class_names = tuple(info["class_names"])
        served = cls(
            info=info,
            class_names=class_names,
            content_size=int(info.get("content_size", preprocess.MNIST_CONTENT_SIZE)),
            version=str(info.get("version", version)),
            name=str(info.get("registered_model", "classifier")),
        )
        served._infer = _traced_model(path, outputs=len(class_names), threads=threads)
        return served

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, classes), for float32 (N, 28, 28) images in [0, 1]."""
        return np.asarray(self._infer(images), dtype=np.float32)

    def results(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """One JSON-ready answer per row of probabilities."""
        labels = probabilities.argmax(axis=1).tolist()
        names = self.class_names
        rows = np.round(probabilities.astype(np.float64), 6).tolist()
        return [
            {
                "label": label,
                "class_name": names[label],
                "probabilities": dict(zip(names, row, strict=True)),
                "model_version": self.version,
            }
            for label, row in zip(labels, rows, strict=True)
        ]

    def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        return self.results(self.probabilities(images))


def _traced_model(path: Path, *, outputs: int, threads: int):
    """The Keras model at `path` as a traced function of float32 (N, 28, 28) batches."""
    import keras
    import tensorflow as tf

    from pipeline import devices

    # Each worker gets its share of the cores; TensorFlow's default (every core, in every
    # worker) oversubscribes the CPU with several workers, and one image gains nothing.
    # RuntimeError: TensorFlow already runs in this process (in tests) and keeps its threads.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    devices.configure()
    model = keras.saving.load_model(path, compile=False)
    if model.output_shape[-1] != outputs:
        raise ValueError(f"model has {model.output_shape[-1]} outputs but {outputs} class names")
    infer = traced(model)
    infer(np.zeros((1, 28, 28), np.float32))
    return infer


def traced(model):
    """`model` at inference as a traced function of float32 (N, 28, 28) batches: with a fixed
    signature a call costs a fraction of `model.predict`'s (bench/forward_cost.py times this)."""
    import tensorflow as tf

    return tf.function(
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)],
    )


def threads_per_worker(configured: int, workers: int) -> int:
    """TF_THREADS when set (non-zero), else the cores divided among the workers."""
    return configured or max(1, (os.cpu_count() or 1) // workers)
