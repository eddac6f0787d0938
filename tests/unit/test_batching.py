"""Batches reach the model in chunks, and off the event loop: single images never queue behind
a whole batch (serving.batching; bench/soak.py measures the latency)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving import batching


class Recorder:
    """A stand-in model call that notes the sizes it was given and the thread it ran in."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: set[int] = set()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        self.threads.add(threading.get_ident())
        return images.reshape(len(images), -1)[:, :3] * 2


@pytest.mark.parametrize(
    ("count", "chunk", "sizes"), [(10, 4, [4, 4, 2]), (3, 4, [3]), (8, 8, [8])]
)
def test_a_batch_goes_in_chunks_with_the_same_answers(count: int, chunk: int, sizes) -> None:
    images = np.random.default_rng(0).random((count, 28, 28), dtype=np.float32)
    model = Recorder()
    answers = batching.in_chunks(model, images, chunk)
    assert model.sizes == sizes
    np.testing.assert_array_equal(answers, images.reshape(count, -1)[:, :3] * 2)


def test_batches_run_in_a_thread_and_single_images_in_the_loop() -> None:
    loop_thread: set[int] = set()
    single, batch = Recorder(), Recorder()

    async def serve() -> None:
        loop_thread.add(threading.get_ident())
        await batching.probabilities(single, np.zeros((1, 28, 28), np.float32), 64)
        await batching.probabilities(batch, np.zeros((100, 28, 28), np.float32), 64)

    asyncio.run(serve())
    assert single.threads == loop_thread
    assert batch.threads and batch.threads.isdisjoint(loop_thread)
    assert batch.sizes == [64, 36]
