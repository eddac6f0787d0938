"""The watch: every prediction the service answers is recorded, and counted for Prometheus.

Records go through BentoML's monitoring API (`bentoml.monitor`): by default JSON lines under
`<MONITOR_DIR>/predictions/data/`, one file per worker; a BentoML configuration can ship them to
OTLP instead. One row per image: time, request id, endpoint, model name and version, predicted
class, confidence and cheap input statistics (`input_statistics`); the 28x28 input itself only
for a sampled fraction (`MONITOR_PIXEL_RATE`, default 0). `python -m serving.tools.monitor` reads
the rows back and compares them with the test split.

Prometheus counters sit next to BentoML's own at `/metrics`: predictions by endpoint and class,
and a histogram of the confidence.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from serving import preprocess
from serving.records import log_later
from serving.retention import Pruner
from serving.shadow import Shadow

log = logging.getLogger("bentoml.serving")

MONITOR_NAME = "predictions"
# Pixels brighter than half scale are ink; the datasets' strokes and fabrics are mostly far above.
INK_LEVEL = 0.5
# The content box holds every pixel the preprocessing would count as content.
CONTENT_LEVEL = preprocess.CONTENT_THRESHOLD
STATISTICS = ("mean_intensity", "ink_fraction", "box_height", "box_width")
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

# /predict is batched across requests, so its rows are recorded per request on the way out
# (`PredictWatch`): the request's validator leaves its pixels here, the answer brings the classes.
_PREDICT_INPUTS: contextvars.ContextVar[list[np.ndarray] | None] = contextvars.ContextVar(
    "predict_inputs", default=None
)


def input_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of float32 (N, 28, 28) model inputs in [0, 1]: mean intensity, the fraction of
    ink pixels, and the height and width of the box around the content (0 for a blank image)."""
    images = np.asarray(images, dtype=np.float32)
    content = images > CONTENT_LEVEL
    return {
        "mean_intensity": images.mean(axis=(1, 2)),
        "ink_fraction": (images > INK_LEVEL).mean(axis=(1, 2)),
        "box_height": _extent(content.any(axis=2)),
        "box_width": _extent(content.any(axis=1)),
    }


def _extent(occupied: np.ndarray) -> np.ndarray:
    """Per row of a boolean (N, L) array: last True index - first True index + 1, or 0."""
    length = occupied.shape[1]
    first = occupied.argmax(axis=1)
    last = length - 1 - occupied[:, ::-1].argmax(axis=1)
    return np.where(occupied.any(axis=1), last - first + 1, 0)


@functools.cache
def _metrics() -> tuple[Any, Any]:
    """The Prometheus counter and histogram, made once per process.

    `bentoml.metrics` is a deprecated alias of prometheus_client in BentoML 1.4; BentoML starts
    each worker with PROMETHEUS_MULTIPROC_DIR set, so several workers add up in `/metrics`.
    """
    import prometheus_client

    predictions = prometheus_client.Counter(
        "classifier_predictions",
        "Predictions answered, by endpoint and predicted class",
        labelnames=("endpoint", "class_name"),
    )
    confidence = prometheus_client.Histogram(
        "classifier_confidence",
        "Probability of the predicted class",
        labelnames=("endpoint",),
        buckets=CONFIDENCE_BUCKETS,
    )
    return predictions, confidence


class Answered(NamedTuple):
    """What one call answered, as the watch keeps it until its rows are made: the model inputs
    (N, 28, 28), each answered class's probability and the classes, and the version."""

    endpoint: str
    images: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray
    model_version: str


@dataclass
class Watch:
    """Records one worker's predictions (see the module's docstring)."""

    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    pixel_rate: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    # Removes old record files now and then (serving.retention); None keeps them all.
    pruner: Pruner | None = None
    # Another version answering a sampled fraction beside the served one (serving.shadow).
    shadow: Shadow | None = None

    def record(
        self,
        endpoint: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        model_version: str | None = None,
    ) -> None:
        """One row per image the service answered at `endpoint`, in the current request's
        context (which gives the rows its request id). `labels` are the answered classes
        (default: the most probable), `model_version` the version that answered (default: the
        one the watch started with). A failure to record is logged, never the client's
        problem: the answer stands."""
        try:
            labels = probabilities.argmax(axis=1) if labels is None else np.asarray(labels)
            self._record(endpoint, images, probabilities, labels, model_version)
        except Exception:
            log.exception("could not record %d prediction(s) of %s", len(images), endpoint)
        if self.pruner is not None:
            self.pruner.maybe_prune()

    async def record_in_steps(
        self,
        endpoint: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        step: int,
        model_version: str | None = None,
    ) -> None:
        """`record`, `step` images at a time with a pause for the event loop between steps: a
        batch's 256 rows hold the worker's interpreter ~5 ms in one go. A sampled request is
        also answered by the shadow, in a task of its own (serving.shadow)."""
        if self.shadow is not None:
            self.shadow.maybe_compare(
                endpoint, images, probabilities, model_version or self.model_version
            )
        labels = None if labels is None else np.asarray(labels)
        for start in range(0, len(images), step):
            part = slice(start, start + step)
            self.record(
                endpoint,
                images[part],
                probabilities[part],
                None if labels is None else labels[part],
                model_version=model_version,
            )
            if start + step < len(images):
                await asyncio.sleep(0)

    def columns(
        self,
        endpoint: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        labels: np.ndarray,
        model_version: str | None = None,
    ) -> dict[str, tuple[list[Any], str, str]]:
        """The monitor's columns for these answers: name -> (values, role, kind)."""
        confidence = probabilities.max(axis=1)
        version = model_version or self.model_version
        return self.columns_of([Answered(endpoint, images, confidence, labels, version)])

    def columns_of(self, answers: list[Answered]) -> dict[str, tuple[list[Any], str, str]]:
        """`columns` of several answers at once, in order (the monitor's writer thread makes a
        block's rows with one call, serving.records.log_later)."""
        images = np.concatenate([answer.images for answer in answers])
        labels = np.concatenate([answer.labels for answer in answers]).astype(int)
        confidence = np.concatenate([answer.confidence for answer in answers]).astype(np.float64)

        def each(field: str) -> list[Any]:
            return [getattr(a, field) for a in answers for _ in range(len(a.labels))]

        columns: dict[str, tuple[list[Any], str, str]] = {
            "endpoint": (each("endpoint"), "feature", "categorical"),
            "model_name": ([self.model_name] * len(labels), "feature", "categorical"),
            "model_version": (each("model_version"), "feature", "categorical"),
            "label": (labels.tolist(), "prediction", "categorical"),
            "class_name": (
                [self.class_names[label] for label in labels],
                "prediction",
                "categorical",
            ),
            "confidence": (np.round(confidence, 6).tolist(), "prediction", "numerical"),
        }
        for name, values in input_statistics(images).items():
            rounded = values if values.dtype.kind in "iu" else np.round(values.astype(float), 6)
            columns[name] = (rounded.tolist(), "feature", "numerical")
        if self.pixel_rate > 0:
            columns["pixels"] = (self._sampled_pixels(images), "feature", "numerical_sequence")
        return columns

    def _record(
        self,
        endpoint: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        labels: np.ndarray,
        model_version: str | None,
    ) -> None:
        """The rows are made later, a block of requests at once (`columns_of`); the counters
        now."""
        if not len(images) == len(probabilities) == len(labels) or np.ndim(images) != 3:
            raise ValueError(f"{len(labels)} label(s) for images of shape {np.shape(images)}")
        confidence = probabilities.max(axis=1)
        version = model_version or self.model_version
        answered = Answered(endpoint, images, confidence, labels, version)
        log_later(MONITOR_NAME, self.columns_of, answered, len(labels))
        self._count(endpoint, labels, confidence)

    def _sampled_pixels(self, images: np.ndarray) -> list[list[int] | None]:
        """The 784 pixels (0-255) of a sampled fraction of the images, None for the others.

        Every row carries the column, so the monitor's columns stay the same length."""
        chosen = self.rng.random(len(images)) < self.pixel_rate
        pixels = np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8).reshape(len(images), -1)
        return [row.tolist() if keep else None for row, keep in zip(pixels, chosen, strict=True)]

    def _count(self, endpoint: str, labels: np.ndarray, confidence: np.ndarray) -> None:
        predictions, histogram = _metrics()
        for label, count in enumerate(np.bincount(labels, minlength=len(self.class_names))):
            if count:
                predictions.labels(endpoint, self.class_names[label]).inc(int(count))
        observed = histogram.labels(endpoint)
        for value in confidence.tolist():
            observed.observe(value)


def keep_predict_inputs(images: np.ndarray) -> None:
    """Called by /predict's per-request validator: the pixels the request's answer is for."""
    kept = _PREDICT_INPUTS.get()
    if kept is not None:
        kept.append(images)


class PredictWatch:
    """ASGI middleware that records /predict's answers, one request at a time.

    BentoML batches /predict across requests, so the model call knows no request; this sees each
    request's validated pixels (`keep_predict_inputs`) and its JSON answer, in its own context.
    """

    def __init__(self, app, *, path: str = "/predict") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        kept: list[np.ndarray] = []
        token = _PREDICT_INPUTS.set(kept)
        status, body = 0, bytearray()

        async def watched(message: Mapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and status == 200:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        await _record_predict(kept, bytes(body))
                    except Exception:
                        log.exception("could not record the answer of %s", self.path)

        try:
            await self.app(scope, receive, watched)
        finally:
            _PREDICT_INPUTS.reset(token)


def predict_answers(
    kept: list[np.ndarray], body: bytes
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The images, probabilities and answered labels of a /predict response body; None when it
    does not answer these pixels. The labels are the answer's own: its probabilities are
    rounded, and a tie after rounding would name another class."""
    return _answered(kept, json.loads(body))


def _answered(
    kept: list[np.ndarray], answers: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`predict_answers` of a body already read as JSON."""
    probabilities = np.array(
        [list(answer["probabilities"].values()) for answer in answers], dtype=np.float64
    )
    images = np.concatenate(kept) if kept else np.zeros((0, 28, 28), np.float32)
    if len(images) != len(probabilities):
        return None  # not an answer to these pixels; nothing to record truthfully
    return images, probabilities, np.array([answer["label"] for answer in answers], dtype=int)


async def _record_predict(kept: list[np.ndarray], body: bytes) -> None:
    import bentoml

    answers = json.loads(body)
    answered = _answered(kept, answers)
    if answered is not None and answers:
        service = bentoml.get_current_service()
        # The version that answered, which may be the one the worker serves no longer.
        version = str(answers[0]["model_version"])
        await service.watch.record_in_steps(
            "predict", *answered, step=service.settings.batch_chunk_items, model_version=version
        )
