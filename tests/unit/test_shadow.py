"""The shadow works in a thread of its own at a lower priority, so the champion comes first."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import prometheus_client
from bentoml._internal.context import trace_context

from serving import shadow


class Recorder:
    """A stand-in shadow model (the served one is an onnxruntime session): which thread ran it,
    at what nice value."""

    version = "2"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.request_ids: list[int | None] = []

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        native = threading.get_native_id()
        self.seen.append((native, os.getpriority(os.PRIO_PROCESS, native)))
        self.request_ids.append(trace_context.request_id)
        return np.full((len(images), 3), 1 / 3, dtype=np.float32)


def different() -> float:
    """Images the shadow (v2) answered with another class than the champion (v1), so far."""
    labels = {"champion_version": "1", "shadow_version": "2", "agreement": "different"}
    found = prometheus_client.REGISTRY.get_sample_value("classifier_shadow_images_total", labels)
    return found or 0.0


def test_the_shadow_answers_off_the_event_loop_at_a_lower_priority(tmp_path, monkeypatch):
    # Records written to a relative folder land here, not in the checkout.
    monkeypatch.chdir(tmp_path)
    model = Recorder()
    watched = shadow.Shadow(lambda: model, fraction=1.0)
    champion = np.array([[0.1, 0.8, 0.1]], dtype=np.float32)

    async def serve_one() -> int:
        trace_context.request_id = 0x5EED  # what serving.request_ids sets for each request
        task = watched.maybe_compare("predict_image", np.zeros((1, 28, 28)), champion, "1")
        assert task is not None
        await task
        return threading.get_native_id()

    before = different()
    loop_thread = asyncio.run(serve_one())
    ((thread, nice),) = model.seen
    assert thread != loop_thread
    loop_nice = os.getpriority(os.PRIO_PROCESS, loop_thread)
    assert nice == min(shadow.MAX_NICE, loop_nice + shadow.SHADOW_NICE) > loop_nice
    # ... in the request's context, so that its record carries the request's id.
    assert model.request_ids == [0x5EED]
    # Its answer was counted: the uniform shadow's class (0) is not the champion's (1).
    assert different() == before + 1
