"""The served model: an ONNX file from the BentoML store run by ONNX Runtime, its class names and
its answers. Nothing here imports TensorFlow or Keras: a serving worker never loads them."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving import preprocess

# Under `bentoml.`, so BentoML shows these lines in the server log (it shows its own loggers).
log = logging.getLogger("bentoml.serving")
# The BentoML model's files (`serving.tools.package` writes them; `info["onnx"]` says which is
# served).
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def served_file(info: dict[str, Any]) -> str:
    """The file name, inside the BentoML model, of the ONNX file to serve."""
    return str((info.get("onnx") or {}).get("served_file", FP32_FILE))


@dataclass
class ServedModel:
    """A loaded classifier with what the registry recorded about it (`serving.tools.package`)."""

    info: dict[str, Any]
    class_names: tuple[str, ...]
    content_size: int
    version: str
    name: str
    _session: Any = field(repr=False, default=None)
    _input: str = field(repr=False, default="")

    @classmethod
    def load(cls, path: Path, *, info: dict[str, Any], version: str, threads: int) -> ServedModel:
        """Open the ONNX file at `path`; ValueError when it does not match its metadata. The
        runtime, its version, providers and the file's sha256 are added to `info` under
        `runtime` (what /metadata shows)."""
        class_names = tuple(info["class_names"])
        session = open_session(path, threads=threads)
        outputs = session.get_outputs()[0].shape[-1]
        if outputs != len(class_names):
            raise ValueError(f"model has {outputs} outputs but {len(class_names)} class names")
        served = cls(
            info=info | {"runtime": runtime_info(session, path)},
            class_names=class_names,
            content_size=int(info.get("content_size", preprocess.MNIST_CONTENT_SIZE)),
            version=str(info.get("version", version)),
            name=str(info.get("registered_model", "classifier")),
            _session=session,
            _input=session.get_inputs()[0].name,
        )
        served.probabilities(np.zeros((1, 28, 28), np.float32))
        return served

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, classes), for (N, 28, 28) images in [0, 1]."""
        # ONNX Runtime takes exactly the declared type: JSON pixels arrive as float64.
        feed = np.ascontiguousarray(images, dtype=np.float32)
        started = time.perf_counter()
        answer = self._session.run(None, {self._input: feed})[0]
        _forward_seconds().labels(self.version).observe(time.perf_counter() - started)
        return answer

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


@functools.cache
def _forward_seconds() -> Any:
    """Each version's model-call time (the champion's and a shadow's alike), made once per
    process (see `serving.watch._metrics`)."""
    import prometheus_client

    return prometheus_client.Histogram(
        "classifier_forward_seconds",
        "Time of one call of the model (a single image or a chunk of a batch), by version",
        labelnames=("version",),
        buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
    )


def providers() -> list[str]:
    """CUDA where this onnxruntime build and machine have it (onnxruntime-gpu), else the CPU."""
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        return [CPU]
    # onnxruntime-gpu's CUDA and cuDNN come as pip wheels (its `cuda,cudnn` extras), which the
    # dynamic loader does not search: load them first. Without a GPU the session falls back to
    # the CPU, and the log line below says so.
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as error:  # A failed preload only means the CPU.
            log.warning("onnxruntime could not load CUDA libraries (%s)", error)
    return [CUDA, CPU]


def open_session(path: Path, *, threads: int):
    """An InferenceSession on `path` with `threads` intra-op threads, one inter-op thread and no
    spinning: onnxruntime's default (a spinning thread per core, in every worker) would have the
    workers of one machine fight for its cores."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=providers())
    log.info(
        "onnxruntime %s runs %s on %s (%d intra-op threads)",
        onnxruntime.__version__,
        path.name,
        ", ".join(session.get_providers()),
        threads,
    )
    return session


def runtime_info(session: Any, path: Path) -> dict[str, Any]:
    """What /metadata says about how the model runs."""
    import onnxruntime

    return {
        "name": "onnxruntime",
        "version": onnxruntime.__version__,
        "providers": list(session.get_providers()),
        "file": path.name,
        "precision": "int8" if path.name == INT8_FILE else "fp32",
        "sha256": file_sha256(path),
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def threads_per_worker(configured: int, workers: int) -> int:
    """MODEL_THREADS when set (non-zero), else the cores divided among the workers."""
    return configured or max(1, (os.cpu_count() or 1) // workers)
