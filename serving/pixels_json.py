"""`/predict`'s JSON, read a step of images at a time so that the worker serves others between.

BentoML parses a request's JSON body in the worker's event loop in one go: for 256 images (2.5 MB)
that is ~10 ms in which no other request of that worker moves, since parsing holds the
interpreter (a thread would not help). `pixels_in_steps` reads the plain form
`{"pixels": [image, image, ...]}`, each image a list of 784 numbers or of 28 rows of 28, a step
of images at a time with a pause for the event loop between steps. Anything else (another key, a
form it does not know, a ragged or non-numeric image, too many images) gives None, and BentoML
parses the body as before, with its messages.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pydantic_core

_HEAD = re.compile(rb'\s*\{\s*"pixels"\s*:\s*\[\s*')
# After an image: a comma and the next image, or the end of the list and of the object.
_NEXT = re.compile(rb"\s*,\s*")
_TAIL = re.compile(rb"\s*\]\s*\}\s*\Z")
# The end of an image given as rows: a row's "]" and then the image's.
_NESTED_END = re.compile(rb"\]\s*\]")
_BLANKS = re.compile(rb"\s*")


def image_spans(body: bytes) -> list[tuple[int, int]] | None:
    """Where each image of `{"pixels": [...]}` lies in `body`: (start, end) byte offsets, end
    excluded; None when the body is not in that form."""
    head = _HEAD.match(body)
    if head is None:
        return None
    spans: list[tuple[int, int]] = []
    position = head.end()
    while body[position : position + 1] == b"[":
        inner = _BLANKS.match(body, position + 1).end()
        if body[inner : inner + 1] == b"[":
            found = _NESTED_END.search(body, position)
            end = found.end() if found else 0
        else:
            end = body.find(b"]", position) + 1
        if end <= 0:
            return None
        spans.append((position, end))
        separator = _NEXT.match(body, end)
        if separator is None:
            position = end
            break
        position = separator.end()
        if body[position : position + 1] != b"[":
            return None  # a comma with no image after it
    return spans if _TAIL.match(body, position) else None


async def pixels_in_steps(body: bytes, *, step: int, max_items: int) -> np.ndarray | None:
    """The pixels of a plain `/predict` body as one numeric array, read `step` images at a time
    with a pause for the event loop between steps; None when BentoML should parse the body."""
    spans = image_spans(body)
    if not spans or len(spans) > max_items:
        return None
    parts = []
    for first in range(0, len(spans), step):
        start, end = spans[first][0], spans[min(first + step, len(spans)) - 1][1]
        try:
            part = np.asarray(pydantic_core.from_json(b"[" + body[start:end] + b"]"))
        except ValueError:  # not JSON, or ragged images
            return None
        if part.dtype.kind not in "iuf":
            return None
        parts.append(part)
        await asyncio.sleep(0)
    try:
        return np.concatenate(parts)
    except ValueError:  # images of different shapes in different steps
        return None
