"""Model calls for many images, so that single images never queue behind a batch.

A model runtime runs one process's calls on a shared pool of threads: TensorFlow's inter- and
intra-op pools, one thread each in a worker, run a single image's graph only once a 256- or
4096-image batch's graph has finished (bench/soak.py saw single images wait seconds). And a
model call made in the event loop holds every other request of that worker until it returns.
So a batch is cut into chunks of BATCH_CHUNK_ITEMS images, called one after the other: a single
image waits for at most one chunk, whatever the runtime; and the working memory of a call is a
chunk's, not a merged batch's (the high-water mark that stayed in the workers' RSS). Batches
that come through our own routes run in a thread, one at a time per worker, not in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import numpy as np

# Up to this many images, a call costs less than a hop to a thread and back: it runs in the loop.
INLINE_ITEMS = 4


def in_chunks(
    probabilities: Callable[[np.ndarray], np.ndarray], images: np.ndarray, chunk: int
) -> np.ndarray:
    """`probabilities` of `images`, called on at most `chunk` images at a time."""
    if len(images) <= chunk:
        return probabilities(images)
    return np.concatenate(
        [probabilities(images[start : start + chunk]) for start in range(0, len(images), chunk)]
    )


@cache
def _batch_thread() -> ThreadPoolExecutor:
    """One thread per worker process for batches: a second batch waits its turn instead of
    taking a second core from the single images. Made on first use, in the worker."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")


async def probabilities(
    probabilities: Callable[[np.ndarray], np.ndarray], images: np.ndarray, chunk: int
) -> np.ndarray:
    """`in_chunks` from a request handler: in the event loop for a few images, else in the
    batch thread (so the loop goes on serving other requests meanwhile)."""
    if len(images) <= INLINE_ITEMS:
        return probabilities(images)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _batch_thread(), partial(in_chunks, probabilities, images, chunk)
    )
