"""BentoML service: the registered champion classifies images and pixel batches.

Endpoints (all POST, JSON out): `/predict_image` (multipart field `image`), `/predict_images`
(multipart field `images`, repeated), `/predict` (JSON `{"pixels": ...}`, adaptively batched) and
`/metadata`. Bad input gets a 4xx with `{"error": ...}`; it never takes the service down.

Configuration, all by environment variable:
    BENTO_MODEL        BentoML model tag to serve (`make serve` passes the champion's)
    MAX_BODY_BYTES     largest request body accepted (default 20 MiB)
    MAX_IMAGE_PIXELS   largest decoded image, width x height (default 4096 x 4096)
    MAX_IMAGES         most images in one /predict_images request (default 64)
    MAX_BATCH_ITEMS    most images in one /predict request (default 1024)
    SERVING_WORKERS    worker processes (default: one per core, at most 4)
    BATCH_MAX_LATENCY_MS  /predict sheds (503) requests predicted to wait longer (default 10 s)
    TF_THREADS         TensorFlow threads per worker (default: cores / workers)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import AfterValidator
from starlette.responses import JSONResponse

from serving import preprocess

log = logging.getLogger("serving")

MODEL_TAG = os.environ.get("BENTO_MODEL", "fashion-mnist-classifier:latest")
MAX_BODY_BYTES = int(os.environ.get("MAX_BODY_BYTES", 20 * 1024 * 1024))
MAX_IMAGE_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", 4096 * 4096))
MAX_IMAGES = int(os.environ.get("MAX_IMAGES", 64))
MAX_BATCH_ITEMS = int(os.environ.get("MAX_BATCH_ITEMS", 1024))
# One worker process per core (up to 4): a worker spends about half its time in BentoML's own
# request handling, which is single-threaded Python.
WORKERS = int(os.environ.get("SERVING_WORKERS", min(4, os.cpu_count() or 1)))
BATCH_MAX_LATENCY_MS = int(os.environ.get("BATCH_MAX_LATENCY_MS", 10_000))
# A declared media type spares BentoML rebuilding the output's JSON schema on every response.
Json = ContentType("application/json")


def error_response(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before anything parses them.

    BentoML has no body limit of its own, so one large upload could exhaust memory.
    """

    def __init__(self, app, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send) -> None:
        response = error_response(
            f"the request body is over the limit of {self.max_bytes} bytes; send smaller or"
            " fewer images (the limit is MAX_BODY_BYTES)",
            413,
        )
        await response({"type": "http"}, None, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        # No length given (chunked upload): read up to the limit, then replay what was read.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send)
                return
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def checked_pixels(pixels: Any) -> np.ndarray:
    """Pydantic validator for /predict: runs per request, before requests are batched together,
    so one client's bad batch is a 400 for that client only."""
    try:
        return preprocess.pixels_to_batch(pixels, max_items=MAX_BATCH_ITEMS)
    except preprocess.ImageError as error:
        raise ValueError(str(error)) from None


def _stop_server(reason: str) -> None:
    """Stop the whole server when a worker cannot load the model.

    BentoML restarts a worker whose start-up fails, forever, and `/readyz` then hangs; stopping the
    arbiter (our parent process) makes `bentoml serve` exit with the reason in its log instead.
    """
    log.critical("cannot start: %s", reason)
    from bentoml._internal.context import server_context

    if server_context.worker_index is not None:
        os.kill(os.getppid(), signal.SIGTERM)


@bentoml.service(
    name="classifier",
    workers=WORKERS,
    traffic={"timeout": 30},
    resources={"cpu": "2"},
)
class Classifier:
    """Serves one BentoML model made by `serving.package` from the MLflow registry's champion."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        try:
            self.info = dict(self.model_ref.info.metadata)
            self.class_names = tuple(self.info["class_names"])
            self.content_size = int(self.info.get("content_size", preprocess.MNIST_CONTENT_SIZE))
            self.version = str(self.info.get("version", self.model_ref.tag.version))
            self._load(Path(self.model_ref.path_of("model.keras")))
        except Exception as error:
            _stop_server(f"model {MODEL_TAG}: {type(error).__name__}: {error}")
            raise
        log.info("serving %s v%s (%s)", self.info.get("registered_model"), self.version, MODEL_TAG)

    def _load(self, path: Path) -> None:
        import keras
        import tensorflow as tf

        from pipeline import devices

        # Each worker gets its share of the cores; TensorFlow's default (every core, in every
        # worker) oversubscribes the CPU with several workers, and one image gains nothing.
        # RuntimeError: TensorFlow already runs in this process (in tests) and keeps its threads.
        threads = int(os.environ.get("TF_THREADS", max(1, (os.cpu_count() or 1) // WORKERS)))
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        devices.configure()
        model = keras.saving.load_model(path, compile=False)
        outputs = model.output_shape[-1]
        if outputs != len(self.class_names):
            raise ValueError(f"model has {outputs} outputs but {len(self.class_names)} class names")
        # A traced function with a fixed signature costs a fraction of model.predict per call.
        self._infer = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)],
        )
        self._infer(np.zeros((1, 28, 28), np.float32))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._infer(images), dtype=np.float64)

    def results(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """One JSON-ready answer per row of probabilities."""
        labels = probabilities.argmax(axis=1).tolist()
        names = self.class_names
        return [
            {
                "label": label,
                "class_name": names[label],
                "probabilities": dict(zip(names, row, strict=True)),
                "model_version": self.version,
            }
            for label, row in zip(labels, np.round(probabilities, 6).tolist(), strict=True)
        ]

    def _model_input(self, path: Path, field: str) -> np.ndarray:
        """One upload as a (28, 28) model input; an ImageError names the field it came in."""
        try:
            return preprocess.preprocess(
                Path(path).read_bytes(), max_pixels=MAX_IMAGE_PIXELS, content_size=self.content_size
            )
        except preprocess.ImageError as error:
            raise preprocess.ImageError(f"{field}: {error}") from None

    @bentoml.api
    def predict_image(self, image: Path) -> Annotated[dict[str, Any], Json]:
        """Classify one image (PNG, JPEG, BMP, GIF, WebP; any size; grey, RGB or RGBA)."""
        try:
            batch = self._model_input(image, "image")[np.newaxis]
        except preprocess.ImageError as error:
            return error_response(str(error))
        return self.results(self.probabilities(batch))[0]

    @bentoml.api
    def predict_images(self, images: list[Path]) -> Annotated[list[dict[str, Any]], Json]:
        """Classify several images sent as repeated multipart fields `images`."""
        if not images:
            return error_response("images: no image received; send one or more `images` fields")
        if len(images) > MAX_IMAGES:
            return error_response(
                f"images: {len(images)} images is over the limit of {MAX_IMAGES} per request"
                " (MAX_IMAGES); split them over several requests"
            )
        try:
            batch = np.stack(
                [self._model_input(path, f"images[{index}]") for index, path in enumerate(images)]
            )
        except preprocess.ImageError as error:
            return error_response(str(error))
        return self.results(self.probabilities(batch))

    # BentoML answers 503 to a queued request once it has waited, or is predicted to wait, longer
    # than max_latency_ms: at 20 ms, eight concurrent clients on a busy 2-core CPU got a third of
    # their requests refused. It is a deadline for shedding load, not a delay added to requests.
    @bentoml.api(batchable=True, max_batch_size=4096, max_latency_ms=BATCH_MAX_LATENCY_MS)
    def predict(
        self, pixels: Annotated[Any, AfterValidator(checked_pixels)]
    ) -> Annotated[list[dict[str, Any]], Json]:
        """Classify a batch of (N, 28, 28) or (N, 784) pixels, uint8 0-255 or float 0-1.

        Requests are batched together adaptively; each gets back one answer per image it sent.
        """
        return self.results(self.probabilities(pixels))

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Registered name, version, variant, dataset, classes, metrics and provenance."""
        return self.info | {"bento_model": str(self.model_ref.tag)}


Classifier.add_asgi_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
