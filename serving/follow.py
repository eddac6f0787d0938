"""A worker follows the model it is told to serve, without a restart and without a lost request.

A pointer file (`FOLLOW_FILE`) names the BentoML model tag to serve; `serving.tools.follow` keeps
it on the registry's alias (`make serve` runs both). Every worker reads the file itself every
`FOLLOW_POLL_MS` milliseconds: a request reaches one worker, a file reaches them all. When the tag
changes, the worker loads the candidate beside the served model and checks it (`check`): its served
file has the sha256 its metadata records, it opens, has as many outputs as classes, answers a
warm-up image, and answers the probe recorded at registration (validation images and the registered
file's probabilities) as it was registered; it classifies the same classes from the same input
contract as the served model. Then one assignment swaps it in. A request takes the served model
once, at its start, so it is answered wholly by one version (the one its answer names), and
requests in flight finish on the version that started them. A refused candidate leaves the served
model in place; the log and `/metrics` (`classifier_model_swaps_total`) say which version was
refused and why, and it is tried again only when the file changes again;
`classifier_served_since_timestamp_seconds` says when the served version took over. Nothing here
talks to MLflow.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.model import ServedModel, file_sha256, served_file

log = logging.getLogger("bentoml.serving")
# Rounds after a swap on which freed memory is given back (release_freed_memory).
TRIM_ROUNDS = 8


class Refused(ValueError):
    """A candidate model that must not be served; the message says why, `reason` in one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Served:
    """What a worker serves: the model, the BentoML tag it came from, since when (epoch s)."""

    model: ServedModel
    tag: str
    since: float


def read_pointer(path: Path) -> str | None:
    """The tag the pointer file names, or None when it is missing or empty."""
    try:
        tag = path.read_text().strip()
    except OSError:
        return None
    return tag or None


def load_candidate(tag: str, *, threads: int) -> ServedModel:
    """The BentoML model `tag`, opened and checked on its own (`Refused` says what is wrong)."""
    import bentoml

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise Refused("missing", f"{tag} is not in the BentoML store") from None
    info = dict(stored.info.metadata)
    path = Path(stored.path_of(served_file(info)))
    expected = (info.get("onnx") or {}).get("sha256")
    if not path.is_file():
        raise Refused("missing", f"{tag}: its served file {path.name} is missing")
    found = file_sha256(path) if expected else None
    if expected and found != expected:
        raise Refused(
            "sha256",
            f"{tag}: {path.name} has sha256 {found}, not the {expected} recorded"
            " for it; package the version again",
        )
    try:
        model = ServedModel.load(path, info=info, version=str(stored.tag.version), threads=threads)
    except Exception as error:
        raise Refused("load", f"{tag}: {path.name} does not load: {error}") from None
    probe = (info.get("onnx") or {}).get("probe")
    if probe:
        check_probe(model, Path(stored.path_of(probe)), tag=tag)
    return model


def check_probe(model: ServedModel, path: Path, *, tag: str) -> None:
    """`Refused` unless `model` answers the probe recorded at registration (images and the
    registered file's probabilities, `pipeline.model.onnx_export.write_probe`) with the same
    classes and probabilities within the probe's tolerance: the file, the runtime and this
    machine together compute what was registered."""
    try:
        with np.load(path) as probe:
            images, expected = probe["images"], probe["probabilities"]
            tolerance = float(probe["tolerance"])
    except (OSError, KeyError, ValueError) as error:
        raise Refused("probe", f"{tag}: its probe {path.name} cannot be read: {error}") from None
    found = model.probabilities(images)
    if found.shape != expected.shape:
        raise Refused("probe", f"{tag}: answers of shape {found.shape}, the probe {expected.shape}")
    moved = int((found.argmax(axis=1) != expected.argmax(axis=1)).sum())
    difference = float(np.abs(found - expected).max())
    if moved or difference > tolerance:
        raise Refused(
            "probe",
            f"{tag}: on its {len(images)} probe images it answers another class for {moved} and"
            f" probabilities up to {difference:.2g} away from those registered (tolerance"
            f" {tolerance:g}); package the version again, or check the runtime on this machine",
        )


def check(served: ServedModel, candidate: ServedModel) -> None:
    """`Refused` when the routes cannot serve `candidate` in place of `served`: other classes,
    or another input contract, are another task (restart the service for that)."""
    if candidate.class_names != served.class_names:
        raise Refused(
            "classes",
            f"version {candidate.version} classifies {list(candidate.class_names)}, but the"
            f" service serves {list(served.class_names)}; restart the service to change tasks",
        )
    contracts = (served.info.get("input_contract"), candidate.info.get("input_contract"))
    if contracts[0] != contracts[1]:
        raise Refused(
            "contract",
            f"version {candidate.version} takes input {contracts[1]!r}, not {contracts[0]!r}",
        )


def release_freed_memory() -> None:
    """Give the memory of the model just replaced back to the system (glibc's `malloc_trim`):
    glibc keeps freed heap for later, so a worker's resident memory swung by a model's size or
    two from one swap to the next; where there is no glibc, nothing is done."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@functools.cache
def _swaps() -> Any:
    """The swap counter, made once per process (see `serving.watch._metrics`)."""
    import prometheus_client

    return prometheus_client.Counter(
        "classifier_model_swaps",
        "Candidate models a worker swapped in (outcome=served), took as its shadow"
        " (outcome=shadow) or refused (outcome=refused)",
        labelnames=("version", "outcome", "reason"),
    )


@functools.cache
def _since() -> Any:
    """When each version took over, made once per process. The most recent write wins across
    workers, so once every worker has swapped, the new version reads the last worker's instant
    and the replaced one 0."""
    import prometheus_client

    return prometheus_client.Gauge(
        "classifier_served_since_timestamp_seconds",
        "When the version took over (Unix time) as the served model (role=served) or the shadow"
        " (role=shadow); 0 once it has been replaced",
        labelnames=("role", "version"),
        multiprocess_mode="mostrecent",
    )


def announce(role: str, taken: Served | None, replaced: Served | None) -> None:
    """Say in /metrics that `taken` now plays `role` (served or shadow) instead of `replaced`."""
    if replaced is not None and (taken is None or taken.model.version != replaced.model.version):
        _since().labels(role, replaced.model.version).set(0)
    if taken is not None:
        _since().labels(role, taken.model.version).set(taken.since)


class Follower:
    """Polls the pointer file in a daemon thread and swaps checked candidates in."""

    def __init__(
        self,
        pointer: Path,
        *,
        interval: float,
        get: Callable[[], Served | None],
        put: Callable[[Served | None], None],
        load: Callable[[str], ServedModel],
        reference: Callable[[], ServedModel] | None = None,
    ) -> None:
        """`get` and `put` read and replace what is followed; `reference`, when given, is the
        model a candidate is checked against, and what is followed may be None (a shadow,
        `serving.shadow`, which an empty pointer file stops); otherwise the followed model
        itself, which an empty file leaves in place."""
        self.pointer, self.interval = pointer, interval
        self.get, self.put, self.load, self.reference = get, put, load, reference
        self._refused: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        trims = 0
        while not self._stop.wait(self.interval):
            try:
                swapped = self.poll()
            except Exception:  # A bad poll must not end the thread: the next one may work.
                log.exception("following %s", self.pointer)
                continue
            # The replaced model is freed once the requests that took it have finished and their
            # records are written: give its memory back on this round and the next few.
            trims = TRIM_ROUNDS if swapped else max(trims - 1, 0)
            if trims:
                release_freed_memory()

    def poll(self) -> bool:
        """Swap in the model the pointer names, if it is new and passes; whether it swapped."""
        tag = read_pointer(self.pointer)
        served = self.get()
        if tag == (None if served is None else served.tag):
            return False
        if tag is None:
            if self.reference is None:
                return False
            self.put(None)
            announce("shadow", None, served)
            log.info("%s names no model: no longer shadowing", self.pointer)
            return True
        changed = self.pointer.stat().st_mtime
        if self._refused == (tag, changed):
            return False  # refused already; tried again when the file changes
        reference = self.reference() if self.reference is not None else served.model
        try:
            candidate = self.load(tag)
            check(reference, candidate)
        except Refused as error:
            self._refused = (tag, changed)
            _swaps().labels(tag.partition(":v")[2] or tag, "refused", error.reason).inc()
            kept = "none" if served is None else f"v{served.model.version}"
            log.error("refused %s for %s, kept %s: %s", tag, self.pointer.name, kept, error)
            return False
        taken = Served(candidate, tag, time.time())
        self.put(taken)
        role = "served" if self.reference is None else "shadow"
        _swaps().labels(candidate.version, role, "").inc()
        announce(role, taken, served)
        # The instant to the millisecond (the log's own stamp has whole seconds): when this
        # worker's answers start naming the new version.
        since = datetime.fromtimestamp(taken.since, UTC).isoformat(timespec="milliseconds")
        doing = "serving" if role == "served" else "shadowing"
        log.info(
            "now %s %s v%s (%s) since %s", doing, candidate.name, candidate.version, tag, since
        )
        return True
