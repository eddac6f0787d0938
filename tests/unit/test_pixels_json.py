"""/predict's JSON read a step of images at a time (serving.pixels_json): the same numbers as
parsing the whole body, the event loop served between steps, and every body not in the plain
form left to BentoML (None), so that its refusals stay as they were."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from serving import pixels_json
from serving.watch import Watch


def read(body: bytes, *, step: int = 3, max_items: int = 1024):
    return asyncio.run(pixels_json.pixels_in_steps(body, step=step, max_items=max_items))


@pytest.mark.parametrize("shape", [(7, 784), (7, 28, 28)])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("kind", ["floats", "integers", "mixed"])
def test_plain_bodies_read_as_the_whole_body_parses(shape, indent, kind) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, shape).tolist()
    if kind == "floats":
        pixels = np.round(rng.random(shape), 4).tolist()
    elif kind == "mixed":  # one step of integers, the others floats
        pixels = [
            image if index < 3 else np.asarray(image) / 255 for index, image in enumerate(pixels)
        ]
        pixels = [np.asarray(image).tolist() for image in pixels]
    body = json.dumps({"pixels": pixels}, indent=indent).encode()
    found = read(body)
    expected = np.asarray(json.loads(body)["pixels"])
    assert found is not None and found.dtype == expected.dtype
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize(
    "body",
    [
        b'{"pixels": []}',  # empty: BentoML's validator says so
        b'{"pixels": [[1, 2],]}',  # a trailing comma is not JSON
        b'{"pixels": [[1, 2]], "x": 1}',  # another key
        b'{"x": 1, "pixels": [[1, 2]]}',
        b'{"pixels": [[1, 2]]',  # cut short
        b'{"pixels": [[1, 2], [3]]}',  # ragged within a step
        b'{"pixels": [[1, 2], [3, 4], [5, 6], [7]]}',  # ragged across steps
        b'{"pixels": [["a", "b"]]}',
        b'{"pixels": [[true, false]]}',
        b'{"pixels": [[1, 2]] ]}',
        b'{"pixels": [1, 2, 3]}',  # one image, not a batch
        b'{"pixels": "[[1, 2]]"}',
        b"[[1, 2]]",
        b"",
    ],
)
def test_bodies_not_in_the_plain_form_are_left_to_bentoml(body: bytes) -> None:
    assert read(body) is None


def test_more_images_than_allowed_are_left_to_bentoml() -> None:
    body = json.dumps({"pixels": [[0] * 784] * 5}).encode()
    assert read(body, max_items=4) is None
    assert read(body, max_items=5).shape == (5, 784)


def test_the_event_loop_runs_between_steps() -> None:
    body = json.dumps({"pixels": [[0] * 784] * 8}).encode()

    async def both() -> int:
        ticks, done = 0, False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        await pixels_json.pixels_in_steps(body, step=1, max_items=8)
        done = True
        await task
        return ticks

    assert asyncio.run(both()) >= 8


class Rows(Watch):
    """A watch that keeps what each record call got instead of writing it."""

    def __init__(self) -> None:
        super().__init__("m", "1", ("a", "b", "c"))
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def _record(self, endpoint, images, probabilities, labels, model_version) -> None:
        self.calls.append((images, labels))


def test_a_batch_is_recorded_a_step_at_a_time_in_order() -> None:
    images = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 28, 28), np.float32)
    probabilities = np.eye(3, dtype=np.float32)[np.arange(10) % 3]
    watch = Rows()
    asyncio.run(watch.record_in_steps("predict", images, probabilities, step=4))
    assert [len(part) for part, _ in watch.calls] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([part for part, _ in watch.calls]), images)
    assert np.concatenate([labels for _, labels in watch.calls]).tolist() == [
        index % 3 for index in range(10)
    ]
