"""The service's settings: read from the environment when the service starts, checked, frozen.

Four are read when `serving.service` is imported instead (`Declared`), because BentoML takes them
from the class declaration, and `bentoml build` packs the model the class names: `BENTO_MODEL`,
`SERVING_WORKERS`, `BATCH_MAX_LATENCY_MS`, `MONITOR_DIR` and `MONITOR_FLUSH_MS` (the monitoring
configuration). A
built bento serves the model it packs without being told (`packed_model_tag`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

MIB = 1024 * 1024
# Where BentoML writes bento.yaml when this code runs from a built bento: <bento>/src/serving/.
BENTO_ROOT = Path(__file__).resolve().parents[2]
# Settings for which 0 means "no limit" or "choose for me".
ZERO_ALLOWED = ("model_threads", "monitor_keep_days", "monitor_keep_bytes")


@dataclass(frozen=True)
class Settings:
    """Limits and tuning of one service process. Each field is the lower-case name of its
    environment variable (`max_body_bytes` <- MAX_BODY_BYTES)."""

    # Largest request body accepted, with or without a Content-Length.
    max_body_bytes: int = 20 * MIB
    # Largest decoded image, width x height.
    max_image_pixels: int = 4096 * 4096
    # Most images in one /predict_images request.
    max_images: int = 64
    # Most images in one /predict or OIP infer request.
    max_batch_items: int = 1024
    # ONNX Runtime intra-op threads per worker; 0 = the cores divided among the workers.
    model_threads: int = 0
    # Seconds a client is told to wait (Retry-After) when the service sheds load.
    retry_after_s: int = 1
    # Fraction of predictions whose 28x28 model input the watch also records (0 = none, 1 = all).
    monitor_pixel_rate: float = 0.0
    # Most images per model call: larger batches are cut into calls of this many, so a single
    # image never waits behind a whole batch (serving.batching); also the step in which the event
    # loop reads /predict's JSON and records a batch (serving.pixels_json, Watch.record_in_steps).
    batch_chunk_items: int = 32
    # The watch's rotated daily record files older than this many days are removed (0: kept).
    monitor_keep_days: int = 30
    # ... and the oldest of them while all the records hold more bytes than this (0: no limit).
    monitor_keep_bytes: int = 0
    # A file naming the BentoML model tag to serve: every worker follows it (serving.follow).
    # Empty: serve the model the service started with, always (a built bento, say).
    follow_file: str = ""
    # How often each worker reads that file, in milliseconds. A read of a few bytes costs nothing
    # measurable; a longer wait spent half of the 2 s a new champion has to answer after a webhook
    # (docs/performance.md, "Swaps under load").
    follow_poll_ms: int = 250
    # A file naming a model tag that answers beside the served one, off the response path
    # (serving.shadow), for a fraction of the requests; empty: no shadow.
    shadow_file: str = ""
    shadow_fraction: float = 0.1
    # Bearer tokens that open every route but the probes and pages (serving.tokens), separated by
    # commas or spaces; and a file of them, one a line (`#` comments). Both empty: no token asked.
    service_tokens: str = ""
    service_tokens_file: str = ""
    # Tokens of /metrics's own (a scraper's), likewise; both empty: /metrics is open.
    metrics_tokens: str = ""
    metrics_tokens_file: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default: this process's environment); a bad value raises
        ValueError naming the variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = field.name.upper()
            text = environ.get(name)
            if text is None or text == "":
                continue
            if field.type in ("str", str):
                values[field.name] = text
                continue
            if field.type in ("float", float):
                values[field.name] = _fraction(name, text)
                continue
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {text!r}") from None
            if value < 0 or (value == 0 and field.name not in ZERO_ALLOWED):
                raise ValueError(f"{name} must be a positive integer, got {value}")
            values[field.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Declared:
    """What the service class declares to BentoML, read when `serving.service` is imported."""

    # The BentoML model tag to serve (`make serve` passes the champion's).
    model_tag: str = "fashion-mnist-classifier:latest"
    # Worker processes. A worker spends much of each request in single-threaded Python (HTTP,
    # multipart, image decoding), so one process per core, up to 4, uses the cores best.
    workers: int = 0
    # /predict sheds (503) a request predicted to wait longer than this for its batch.
    batch_max_latency_ms: int = 10_000
    # Where `bentoml.monitor` writes the watch's JSON lines (relative to the server's folder).
    monitor_dir: str = "monitoring"
    # How often each worker writes its pending prediction records, in one block (serving.monitors).
    monitor_flush_ms: int = 500
    # BentoML's access log (a line per request: status, size, time, trace id) costs a worker
    # 0.2-0.4 ms of CPU per request, about a tenth of a small one's; the prediction records, the
    # X-BentoML-Request-ID header and /metrics are kept without it. ACCESS_LOG=1 turns it on.
    access_log: bool = False
    # OpenTelemetry spans per request (BentoML's tracing, exported where its configuration says)
    # cost a worker about 0.45 ms of CPU per small request even when none is exported: off
    # unless TRACING=1. Request ids do not need it (serving.request_ids).
    tracing: bool = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, bento_root: Path = BENTO_ROOT
    ) -> Declared:
        """`BENTO_MODEL` names the model; without it, a built bento serves the model it packs
        and a source checkout `fashion-mnist-classifier:latest`."""
        environ = os.environ if environ is None else environ
        return cls(
            model_tag=environ.get("BENTO_MODEL") or packed_model_tag(bento_root) or cls.model_tag,
            workers=_positive(environ, "SERVING_WORKERS", min(4, os.cpu_count() or 1)),
            batch_max_latency_ms=_positive(
                environ, "BATCH_MAX_LATENCY_MS", cls.batch_max_latency_ms
            ),
            monitor_dir=environ.get("MONITOR_DIR") or cls.monitor_dir,
            monitor_flush_ms=_positive(environ, "MONITOR_FLUSH_MS", cls.monitor_flush_ms),
            access_log=_switch(environ, "ACCESS_LOG", cls.access_log),
            tracing=_switch(environ, "TRACING", cls.tracing),
        )


def packed_model_tag(bento_root: Path) -> str | None:
    """The tag of the one model the bento at `bento_root` packs (from its bento.yaml), or None
    when `bento_root` is not a bento or packs no single model."""
    import yaml

    try:
        described = yaml.safe_load((bento_root / "bento.yaml").read_text())
    except FileNotFoundError:
        return None
    described = described or {}
    # BentoML 1.4 lists a new-style service's models under `services`; older bentos at the top.
    entries = [*(described.get("models") or [])]
    for service in described.get("services") or []:
        entries.extend(service.get("models") or [])
    tags = {entry.get("tag") for entry in entries} - {None, ""}
    return tags.pop() if len(tags) == 1 else None


def _fraction(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1, got {text!r}")
    return value


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    text = environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("0", "1", "true", "false"):
        raise ValueError(f"{name} must be 1 (on) or 0 (off), got {text!r}")
    return text in ("1", "true")


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return int(text)
