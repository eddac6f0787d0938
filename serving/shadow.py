"""Shadowing: another version (the registry's `challenger`, say) answers a sampled fraction of live
requests beside the champion, off the response path, and what it would have answered is recorded.

With SHADOW_FILE set (a pointer file naming a BentoML model tag, as FOLLOW_FILE does for the
served model; `make serve SHADOW=challenger` keeps it on the alias) every worker loads that model
and checks it as a candidate (`serving.follow`: sha256, probe, classes, input contract). Then a
fraction SHADOW_FRACTION of the requests it answers are sent to the shadow too, once the answer is
on its way, in a thread of the shadow's own that runs SHADOW_NICE nice steps below the worker:
users get the champion's answer at the champion's latency, and on busy cores the shadow gets what
the champion leaves. Per image, the shadow's answer goes to the records
(`<MONITOR_DIR>/shadow/`: both versions, both classes and confidences, whether they agree, the
shadow's time) and `/metrics` counts agreement (`classifier_shadow_images_total{champion_version,
shadow_version, agreement}`); each version's forward time is `classifier_forward_seconds`
(serving.model). `python -m serving.tools.shadow` compares the two on what was served. At most
MAX_PENDING shadow calls wait at a time in a worker; past that a request is not shadowed (counted
as `agreement="skipped"`), so a slow shadow never piles up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.model import ServedModel
from serving.records import log_columns
from serving.retention import Pruner

log = logging.getLogger("bentoml.serving")
MONITOR_NAME = "shadow"
MAX_PENDING = 4
# The shadow thread runs this many nice steps below the worker: on busy cores the scheduler gives
# it about a tenth of the share of the champion's threads (weights 110 against 1024), so it uses
# mostly what the champion leaves.
SHADOW_NICE = 10
MAX_NICE = 19


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority by SHADOW_NICE (on Linux a thread has its
    own nice value), so that the champion's work comes first on busy cores; elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, nice + SHADOW_NICE))


def shadow_thread() -> ThreadPoolExecutor:
    """The one thread a worker's shadow works in, at a lower priority than the champion's."""
    return ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=lower_priority)


@dataclass
class Shadow:
    """One worker's shadowing: the model to ask (`get`, None: none now) and the fraction."""

    get: Callable[[], ServedModel | None]
    fraction: float
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    # Removes old shadow record files now and then, as the watch does its own.
    pruner: Pruner | None = None
    _pending: set[asyncio.Future] = field(default_factory=set)
    _thread: ThreadPoolExecutor = field(default_factory=shadow_thread)

    def maybe_compare(
        self, endpoint: str, images: np.ndarray, probabilities: np.ndarray, champion_version: str
    ) -> asyncio.Future | None:
        """Start comparing the shadow's answers with the champion's on a sampled request, in the
        shadow's thread (the caller does not wait); its future, or None when not sampled."""
        model = self.get()
        if model is None or model.version == champion_version or not len(images):
            return None
        if self.fraction < 1.0 and self.rng.random() >= self.fraction:
            return None
        if len(self._pending) >= MAX_PENDING:
            _images().labels(champion_version, model.version, "skipped").inc(len(images))
            return None
        # In the shadow's thread, in the request's context (as asyncio.to_thread would run it):
        # its records carry the request's id.
        answer = functools.partial(
            contextvars.copy_context().run,
            self._answer,
            model,
            endpoint,
            images,
            probabilities,
            champion_version,
        )
        task = asyncio.get_running_loop().run_in_executor(self._thread, answer)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def _answer(
        self,
        model: ServedModel,
        endpoint: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        champion_version: str,
    ) -> None:
        """The shadow's answer and its record, in the shadow's thread."""
        try:
            started = time.perf_counter()
            found = model.probabilities(images)
            seconds = time.perf_counter() - started
            record(endpoint, probabilities, found, champion_version, model.version, seconds)
            if self.pruner is not None:
                self.pruner.maybe_prune()
        except Exception:  # the shadow's failure is nobody's answer: log it and go on
            log.exception("shadow v%s could not answer %d image(s)", model.version, len(images))


def record(
    endpoint: str,
    champion: np.ndarray,
    shadow: np.ndarray,
    champion_version: str,
    shadow_version: str,
    seconds: float,
) -> None:
    """The comparison's rows (one per image) and counters."""
    champion_labels, shadow_labels = champion.argmax(axis=1), shadow.argmax(axis=1)
    agree = champion_labels == shadow_labels
    count = len(agree)
    values = {
        "endpoint": [endpoint] * count,
        "champion_version": [champion_version] * count,
        "shadow_version": [shadow_version] * count,
        "champion_label": champion_labels.tolist(),
        "shadow_label": shadow_labels.tolist(),
        "agree": agree.astype(int).tolist(),
        "champion_confidence": np.round(champion.max(axis=1).astype(float), 6).tolist(),
        "shadow_confidence": np.round(shadow.max(axis=1).astype(float), 6).tolist(),
        "shadow_ms": [round(seconds * 1000, 4)] * count,
    }
    categorical = (
        "endpoint",
        "champion_version",
        "shadow_version",
        "champion_label",
        "shadow_label",
    )
    log_columns(
        MONITOR_NAME,
        {
            name: (column, "feature", "categorical" if name in categorical else "numerical")
            for name, column in values.items()
        },
    )
    counter = _images()
    same = int(agree.sum())
    if same:
        counter.labels(champion_version, shadow_version, "same").inc(same)
    if count - same:
        counter.labels(champion_version, shadow_version, "different").inc(count - same)


@functools.cache
def _images() -> Any:
    """The agreement counter, made once per process (see `serving.watch._metrics`)."""
    import prometheus_client

    return prometheus_client.Counter(
        "classifier_shadow_images",
        "Images the shadow version also answered: the same class as the champion, a different"
        " one, or skipped (too many shadow calls waiting)",
        labelnames=("champion_version", "shadow_version", "agreement"),
    )
