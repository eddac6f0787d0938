"""Steady load on a service while its registry's `champion` moves: what every request was answered.

`run_scenario(service)` drives `LoadShape.clients` concurrent clients (asyncio + aiohttp, one
keep-alive connection each; most send single images to `/predict_image` as multipart PNGs, the
others 256-image batches to `/predict` as JSON) back to back for the whole scenario, and meanwhile
promotes v2, promotes v3 and runs the rollback command (back to v2), each at its time on the
`Scenario`. Every request becomes an `Answer`: when it started and ended (epoch seconds, the clock
the registry's tags and the service's log use), its status (0: no answer, the connection was cut
or timed out) and the `model_version`s its answer named. `tests/support/swap_timeline.py` judges
them; the steady-load test and `bench/swap.py` share both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import shapes
from tests.support.follow_stack import FollowedService, Move

# Where a request's answer is judged wrong, this much of its body is kept to say why.
SAMPLE_CHARACTERS = 200
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LoadShape:
    """`clients` concurrent clients, of which `batch_clients` send `batch_size`-image batches."""

    clients: int = 16
    batch_clients: int = 2
    batch_size: int = 256


@dataclass(frozen=True)
class Scenario:
    """When the alias moves: the first move `first_s` after the load starts, each next one
    `spacing_s` after the previous returned, and the load goes on `tail_s` after the last. With
    the defaults for a goal, each swap has the 10 s before it and the 10 s around it to itself
    even when the service takes the whole goal to follow."""

    first_s: float
    spacing_s: float
    tail_s: float

    @classmethod
    def for_goal(cls, goal_s: float, *, first_s: float = 16.0) -> Scenario:
        return cls(first_s, 20.0 + goal_s, goal_s + 6.0)


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    body: bytes
    content_type: str
    images: int


@dataclass(frozen=True)
class Answer:
    """One request: `kind` (single, batch), when it started and ended, the HTTP status (0: none),
    the distinct `model_version`s its answer named, and what was wrong with it ("" if nothing)."""

    kind: str
    start: float
    end: float
    status: int
    versions: tuple[str, ...]
    problem: str = ""

    @property
    def good(self) -> bool:
        return self.status == 200 and not self.problem

    @property
    def ms(self) -> float:
        return 1000.0 * (self.end - self.start)


@dataclass
class LoadRun:
    """A scenario's load: its answers, the alias's moves, and when the load ran (epoch s)."""

    began: float
    ended: float
    answers: list[Answer] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    # (when the sidecar rewrote the tag file, by its mtime; the tag it wrote), in order.
    pointed: list[tuple[float, str]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Everything as JSON, answers one a line."""
        head = {"began": self.began, "ended": self.ended, "pointed": self.pointed}
        head["moves"] = [asdict(move) for move in self.moves]
        lines = [json.dumps(head)] + [json.dumps(asdict(answer)) for answer in self.answers]
        path.write_text("\n".join(lines) + "\n")


def requests(shape: LoadShape) -> tuple[Request, Request]:
    """The single-image and the batch request, encoded once."""
    import httpx

    image = shapes.encode(
        shapes.draw_shape(3, rng=np.random.default_rng(1), ink=0, paper=255), "PNG"
    )
    form = httpx.Request(
        "POST", "http://localhost/", files={"image": ("a.png", image, "image/png")}
    )
    single = Request("single", "/predict_image", form.read(), form.headers["content-type"], 1)
    pixels, _ = shapes.shape_dataset(16, seed=2)
    batch = np.resize(np.rint(pixels * 255).astype(np.uint8), (shape.batch_size, 28, 28))
    body = json.dumps({"pixels": batch.tolist()}, separators=(",", ":")).encode()
    return single, Request("batch", "/predict", body, "application/json", shape.batch_size)


def judged(request: Request, status: int, body: bytes) -> tuple[tuple[str, ...], str]:
    """(the versions an answer names, what is wrong with it or "")."""
    if status != 200:
        return (), f"HTTP {status}: {body[:SAMPLE_CHARACTERS]!r}"
    try:
        found = json.loads(body)
        found = found if isinstance(found, list) else [found]
        versions = tuple(sorted({str(answer["model_version"]) for answer in found}))
    except (ValueError, KeyError, TypeError) as error:
        return (), f"unreadable answer ({error}): {body[:SAMPLE_CHARACTERS]!r}"
    if len(found) != request.images:
        return versions, f"{len(found)} answers to {request.images} images"
    if len(versions) != 1:
        return versions, f"one request answered by several versions: {versions}"
    return versions, ""


async def client(session: Any, url: str, request: Request, stop: asyncio.Event, answers: list):
    """Send `request` back to back until `stop`, appending an `Answer` for each."""
    import aiohttp

    headers = {"Content-Type": request.content_type}
    while not stop.is_set():
        start = time.time()
        try:
            async with session.post(url + request.path, data=request.body, headers=headers) as (
                response
            ):
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            problem = f"no answer: {type(error).__name__}: {error}"[:SAMPLE_CHARACTERS]
            answers.append(Answer(request.kind, start, time.time(), 0, (), problem))
            continue
        versions, problem = judged(request, status, body)
        answers.append(Answer(request.kind, start, time.time(), status, versions, problem))


async def watch(path: Path, stop: asyncio.Event, pointed: list[tuple[float, str]]) -> None:
    """Note each new content of the tag file `path` with its modification time, until `stop`."""
    seen = None
    while not stop.is_set():
        with contextlib.suppress(OSError):
            stamp = path.stat().st_mtime
            if stamp != seen:
                seen = stamp
                pointed.append((stamp, path.read_text().strip()))
        await asyncio.sleep(0.02)


async def drive(
    url: str,
    *,
    shape: LoadShape,
    scenario: Scenario,
    actions: Sequence[Callable[[], Move]],
    pointer: Path,
) -> LoadRun:
    """The load, and the actions (each in a thread, so the clients go on) as `scenario` times
    them; the actions' moves are recorded in order, and the rewrites of the tag file `pointer`."""
    import aiohttp

    single, batch = requests(shape)
    run, stop = LoadRun(time.time(), 0.0), asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with contextlib.AsyncExitStack() as stack:
        tasks = [asyncio.create_task(watch(pointer, stop, run.pointed))]
        for index in range(shape.clients):
            connector = aiohttp.TCPConnector(limit=1)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            await stack.enter_async_context(session)
            request = batch if index < shape.batch_clients else single
            tasks.append(asyncio.create_task(client(session, url, request, stop, run.answers)))
            # Connections opened a moment apart spread over the workers (docs/performance.md).
            await asyncio.sleep(0.02)
        try:
            await asyncio.sleep(scenario.first_s)
            for index, action in enumerate(actions):
                await asyncio.sleep(scenario.spacing_s if index else 0.0)
                run.moves.append(await asyncio.to_thread(action))
            await asyncio.sleep(scenario.tail_s)
        finally:
            # Requests in flight are answered; none is cut short by the end of the load.
            stop.set()
            await asyncio.gather(*tasks)
    run.ended = time.time()
    return run


def run_scenario(
    service: FollowedService, *, shape: LoadShape | None = None, scenario: Scenario | None = None
) -> LoadRun:
    """Promote v2, promote v3, roll back (to v2) under steady load, as the `Scenario` times them
    (by default the one for the service's takeover goal)."""
    actions = [
        lambda: service.promote("2"),
        lambda: service.promote("3"),
        lambda: service.rollback("v3 under test: back to v2"),
    ]
    return asyncio.run(
        drive(
            service.url,
            shape=shape or LoadShape(),
            scenario=scenario or Scenario.for_goal(service.goal_s),
            actions=actions,
            pointer=service.pointer,
        )
    )
