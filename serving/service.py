"""BentoML service: the registered champion classifies images, pixel batches and OIP tensors.

Every route is a row of `serving.endpoints` (docs/serving.md describes them). `/predict` (JSON
pixels, adaptively batched) and `/metadata` are declared here as BentoML APIs; the uploads, the
Open Inference Protocol and the pages are `serving.routes`, mounted over BentoML's app. Every
misuse gets a 4xx with `{"error": ...}` that says what to send; none takes the service down.

Configuration, by environment variable: `serving.settings` (limits and tokens, read when a worker
starts; BENTO_MODEL, SERVING_WORKERS and BATCH_MAX_LATENCY_MS when this module is imported).
With SERVICE_TOKENS_FILE set, every route but the probes and pages asks for a bearer token
(`serving.tokens`).
"""

from __future__ import annotations

import gc
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import AfterValidator

from serving import (
    batching,
    deadline,
    failfast,
    pixels_json,
    preprocess,
    records,
    routes,
    shadow,
    spread,
)
from serving.edge import Edge
from serving.follow import Follower, Served, announce, load_candidate
from serving.model import ServedModel, served_file, threads_per_worker
from serving.monitors import FileMonitor
from serving.request_ids import RequestId
from serving.retention import Pruner, Retention
from serving.settings import Declared, Settings
from serving.shadow import Shadow
from serving.tokens import Guard
from serving.watch import MONITOR_NAME, PredictWatch, Watch, keep_predict_inputs

log = logging.getLogger("bentoml.serving")

DECLARED = Declared.from_env()
# A declared media type spares BentoML rebuilding the output's JSON schema on every response.
Json = ContentType("application/json")


def checked_pixels(pixels: Any) -> np.ndarray:
    """Pydantic validator for /predict: runs per request, before requests are batched together,
    so one client's bad batch is a 400 for that client only."""
    limit = bentoml.get_current_service().settings.max_batch_items
    try:
        batch = preprocess.pixels_to_batch(pixels, max_items=limit)
    except preprocess.ImageError as error:
        raise ValueError(str(error)) from None
    keep_predict_inputs(batch)
    return batch


class PredictInput(bentoml.IODescriptor):
    """/predict's input. A plain JSON body is read a step of images at a time, so that the worker
    answers other requests in between (serving.pixels_json); any other body as BentoML reads it."""

    pixels: Annotated[Any, AfterValidator(checked_pixels)]

    @classmethod
    async def from_http_request(cls, request, serde) -> PredictInput:
        if request.headers.get("content-type", "").startswith("application/json"):
            settings = bentoml.get_current_service().settings
            pixels = await pixels_json.pixels_in_steps(
                await request.body(),
                step=settings.batch_chunk_items,
                max_items=settings.max_batch_items,
            )
            if pixels is not None:
                return cls(pixels=pixels)
        return await super().from_http_request(request, serde)


@bentoml.service(
    name="classifier",
    workers=DECLARED.workers,
    traffic={"timeout": 30},
    resources={"cpu": "2"},
    # The watch's records (serving.watch): JSON lines under MONITOR_DIR. A BentoML configuration
    # file (BENTOML_CONFIG) can override this, e.g. `type: otlp` to ship them instead.
    # serving.monitors.FileMonitor: BentoML's default, with a logger per monitor. Imported here,
    # since BentoML imports the type named lazily, from whichever thread records first.
    monitoring={
        "enabled": True,
        "type": f"{FileMonitor.__module__}.{FileMonitor.__qualname__}",
        "options": {
            "log_path": DECLARED.monitor_dir,
            "flush_s": DECLARED.monitor_flush_ms / 1000,
        },
    },
    # BentoML's access log, a line per request: off unless ACCESS_LOG=1 (serving.settings).
    logging={"access": {"enabled": DECLARED.access_log}},
    # OpenTelemetry spans for every request unless TRACING=1 (serving.request_ids): none.
    **({} if DECLARED.tracing else {"tracing": {"excluded_urls": [".*"]}}),
)
@bentoml.asgi_app(routes.app(), path="/")
class Classifier:
    """Serves one BentoML model made by `serving.tools.package` from the MLflow registry's
    champion."""

    model_ref = bentoml.models.BentoModel(DECLARED.model_tag)

    def __init__(self) -> None:
        try:
            self.settings = Settings.from_env()
            info = dict(self.model_ref.info.metadata)
            model = ServedModel.load(
                Path(self.model_ref.path_of(served_file(info))),
                info=info,
                version=str(self.model_ref.tag.version),
                threads=self.threads,
            )
        except Exception as error:
            failfast.stop_server(f"model {DECLARED.model_tag}: {type(error).__name__}: {error}")
            raise
        # What this worker serves; `serving.follow` replaces it whole when the model changes.
        self.served = Served(model, str(self.model_ref.tag), time.time())
        announce("served", self.served, None)
        # What answers beside it, when SHADOW_FILE names a model (serving.shadow).
        self.shadowed: Served | None = None
        self.watch = Watch(
            model_name=model.name,
            model_version=model.version,
            class_names=model.class_names,
            pixel_rate=self.settings.monitor_pixel_rate,
            pruner=Pruner(Path(DECLARED.monitor_dir) / MONITOR_NAME, self.retention),
        )
        self.watch.pruner.maybe_prune()
        log.info("serving %s v%s (%s)", model.name, model.version, DECLARED.model_tag)
        self.follower = self._follow()
        self.watch.shadow = self._shadow()
        # What is alive now (modules, the model, BentoML) lives as long as the worker: kept out of
        # the garbage collector's full passes, which otherwise walk it all every few seconds.
        gc.freeze()

    # BentoML answers 503 to a queued request once it has waited, or is predicted to wait, longer
    # than max_latency_ms: at 20 ms, eight concurrent clients on a busy 2-core CPU got a third of
    # their requests refused. It is a deadline for shedding load, not a delay added to requests.
    @bentoml.api(
        batchable=True,
        max_batch_size=4096,
        max_latency_ms=DECLARED.batch_max_latency_ms,
        input_spec=PredictInput,
    )
    def predict(self, pixels: np.ndarray) -> Annotated[list[dict[str, Any]], Json]:
        """Classify a batch of (N, 28, 28) or (N, 784) pixels, uint8 0-255 or float 0-1.

        Requests are batched together adaptively; each gets back one answer per image it sent.
        BentoML runs this in a thread; the merged batch goes to the model in chunks.
        """
        chunk = self.settings.batch_chunk_items
        model = self.served.model  # once: the whole batch is answered by one version
        return model.results(batching.in_chunks(model.probabilities, pixels, chunk))

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Registered name, version, variant, dataset, classes, metrics and provenance; the
        BentoML model served and since when."""
        served = self.served
        since = datetime.fromtimestamp(served.since, UTC).isoformat(timespec="seconds")
        return served.model.info | {"bento_model": served.tag, "served_since": since}

    @bentoml.on_shutdown
    def write_pending_records(self) -> None:
        """The prediction and shadow rows still waiting for their block (serving.monitors)."""
        records.flush()

    @property
    def retention(self) -> Retention:
        return Retention(self.settings.monitor_keep_days, self.settings.monitor_keep_bytes)

    @property
    def threads(self) -> int:
        return threads_per_worker(self.settings.model_threads, DECLARED.workers)

    def _follow(self) -> Follower | None:
        """Follow FOLLOW_FILE when it is set (serving.follow); None otherwise."""
        if not self.settings.follow_file:
            return None
        follower = self._follower(self.settings.follow_file, "served")
        follower.start()
        log.info("following the model named in %s", self.settings.follow_file)
        return follower

    def _follower(self, pointer: str, attribute: str, **options) -> Follower:
        """A follower of `pointer` that keeps this worker's `attribute` on the model it names."""
        return Follower(
            Path(pointer),
            interval=self.settings.follow_poll_ms / 1000,
            get=lambda: getattr(self, attribute),
            put=lambda served: setattr(self, attribute, served),
            load=lambda tag: load_candidate(tag, threads=self.threads),
            **options,
        )

    def _shadow(self) -> Shadow | None:
        """Shadow the model SHADOW_FILE names, when it is set (serving.shadow); None otherwise."""
        if not self.settings.shadow_file:
            return None
        follower = self._follower(
            self.settings.shadow_file, "shadowed", reference=lambda: self.served.model
        )
        follower.poll()  # the shadow named at start answers from the first request on
        follower.start()
        log.info(
            "shadowing the model named in %s on %.0f%% of requests",
            self.settings.shadow_file,
            self.settings.shadow_fraction * 100,
        )
        return Shadow(
            lambda: None if self.shadowed is None else self.shadowed.model,
            self.settings.shadow_fraction,
            pruner=Pruner(Path(DECLARED.monitor_dir) / shadow.MONITOR_NAME, self.retention),
        )


deadline.install()
# Each worker accepts connections only while it holds no more than the others (serving.spread).
spread.install(DECLARED.workers)
# Outermost first: the request's id, the token check, then the edge's limits, then the watch.
Classifier.add_asgi_middleware(RequestId)
Classifier.add_asgi_middleware(Guard)
Classifier.add_asgi_middleware(Edge)
Classifier.add_asgi_middleware(PredictWatch)
failfast.arm()
