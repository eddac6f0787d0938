"""Who served what, when: the service's own record of its swaps, the alias's, and their judgement.

Two timelines are set against every `Answer` of `tests/support/swap_load.py`:

- **served**, from the service's log: each worker starts on a version (`serving NAME vN`) and
  logs the instant it swaps (`now serving NAME vN (tag) since <ISO ms>`, `serving.follow`). An
  answer is *served right* when a worker served its version at some moment during the request.
- **champion**, from the registry: `champion_since` on each version and when each move returned
  (`follow_stack.Move`). An answer is *on champion* when its version held the alias at some moment
  between `allowance` seconds before the request and its end; the allowance is the takeover goal,
  since a service that follows an alias serves the old version until it has heard of the move.

`swaps` measures each move: the alias change to the first answer by the new version and to the
last worker's swap, and the requests started after the goal that another version answered.
`p99_ms` gives single-image latency in a window (the bench's 10 s around a swap and before it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tests.support.follow_stack import Move
from tests.support.swap_load import Answer

WORKER = r"\[entry_service:[^\]]*?:(\d+)\]"
STARTED = re.compile(WORKER + r" serving \S+ v(\S+) \(")
SWAPPED = re.compile(WORKER + r" now serving \S+ v(\S+) \(\S+\) since (\S+)")
# Seconds around a swap, and before that, whose single-image p99s the bench compares.
WINDOW_S = 10.0


@dataclass(frozen=True)
class Span:
    """`version` held by `holder` (a worker, or the alias) from `start` to `end` (epoch s)."""

    holder: str
    version: str
    start: float
    end: float


@dataclass(frozen=True)
class Served:
    """The service's log, read: each worker's spans, and the workers that started more than once."""

    spans: list[Span]
    restarted: list[str]

    @property
    def workers(self) -> list[str]:
        return sorted({span.holder for span in self.spans})

    def takeovers(self, version: str, after: float) -> dict[str, float]:
        """Each worker's first swap to `version` at or after `after`."""
        found: dict[str, float] = {}
        for span in sorted(self.spans, key=lambda span: span.start):
            if span.version == version and span.start >= after and span.holder not in found:
                found[span.holder] = span.start
        return found


def served(log: str) -> Served:
    """The spans each worker served, from `bentoml serve`'s log."""
    events: dict[str, list[tuple[float, str]]] = {}
    starts: dict[str, int] = {}
    for line in log.splitlines():
        if match := SWAPPED.search(line):
            worker, version, since = match.groups()
            events.setdefault(worker, []).append(
                (datetime.fromisoformat(since).timestamp(), version)
            )
        elif match := STARTED.search(line):
            worker, version = match.groups()
            starts[worker] = starts.get(worker, 0) + 1
            events.setdefault(worker, []).insert(0, (-math.inf, version))
    spans = []
    for worker, changes in events.items():
        ends = [at for at, _ in changes[1:]] + [math.inf]
        spans += [
            Span(worker, version, at, end) for (at, version), end in zip(changes, ends, strict=True)
        ]
    return Served(spans, sorted(worker for worker, count in starts.items() if count > 1))


def champion_spans(initial: Move, moves: Sequence[Move]) -> list[Span]:
    """The alias's spans: each version from its move's `since` until the next move returned."""
    history = [initial, *moves]
    ends = [move.done for move in moves] + [math.inf]
    starts = [-math.inf] + [move.since for move in moves]
    return [
        Span("champion", move.version, start, end)
        for move, start, end in zip(history, starts, ends, strict=True)
    ]


def held(spans: Iterable[Span], version: str, start: float, end: float) -> bool:
    """Whether some span of `version` overlaps [start, end]."""
    return any(s.version == version and s.start <= end and s.end >= start for s in spans)


def lost(answers: Iterable[Answer]) -> list[Answer]:
    """Requests without a good answer: non-2xx, cut or timed out, or an answer not whole."""
    return [answer for answer in answers if not answer.good]


def not_served(answers: Iterable[Answer], spans: Sequence[Span]) -> list[Answer]:
    """Good answers whose version no worker served at any moment during the request."""
    return [
        answer
        for answer in answers
        if answer.good and not held(spans, answer.versions[0], answer.start, answer.end)
    ]


def off_champion(
    answers: Iterable[Answer], spans: Sequence[Span], *, allowance: float
) -> list[Answer]:
    """Good answers whose version did not hold the alias between `allowance` s before the
    request and its end."""
    return [
        answer
        for answer in answers
        if answer.good and not held(spans, answer.versions[0], answer.start - allowance, answer.end)
    ]


@dataclass(frozen=True)
class Swap:
    """One move as the clients and the workers saw it (seconds after the registry's `since`)."""

    move: Move
    # To the sidecar's rewrite of the tag file naming the new version (None: none seen).
    pointed_s: float | None
    # To the end of the first request, started after the move, that the new version answered.
    first_answer_s: float | None
    # To each worker's swap (None: that worker never took the version before the next move).
    workers_s: dict[str, float | None]
    # Requests started after the goal's end, and answered before the next move, that another
    # version answered (one that spans the next move may be answered by the version after).
    stale: int

    @property
    def every_worker_s(self) -> float | None:
        values = list(self.workers_s.values())
        return None if not values or None in values else max(values)


def swaps(
    answers: Sequence[Answer],
    moves: Sequence[Move],
    log: Served,
    *,
    goal_s: float,
    pointed: Sequence[tuple[float, str]] = (),
) -> list[Swap]:
    """Each move, measured; `pointed`: the tag file's rewrites (`LoadRun.pointed`)."""
    found = []
    for index, move in enumerate(moves):
        until = moves[index + 1].since if index + 1 < len(moves) else math.inf
        written = min(
            (at for at, tag in pointed if at >= move.since and tag.endswith(f":v{move.version}")),
            default=None,
        )
        after = [answer for answer in answers if move.since <= answer.start < until]
        first = min(
            (answer.end for answer in after if answer.good and answer.versions == (move.version,)),
            default=None,
        )
        taken = log.takeovers(move.version, move.since)
        workers = {
            worker: (taken[worker] - move.since if taken.get(worker, until) < until else None)
            for worker in log.workers
        }
        stale = sum(
            1
            for answer in after
            if answer.good
            and answer.start >= move.since + goal_s
            and answer.end < until
            and answer.versions != (move.version,)
        )
        found.append(
            Swap(
                move,
                None if written is None else written - move.since,
                None if first is None else first - move.since,
                workers,
                stale,
            )
        )
    return found


def p99_ms(answers: Iterable[Answer], start: float, end: float, kind: str = "single") -> float:
    """The p99 latency of good `kind` requests started in [start, end) (nan: none)."""
    latencies = sorted(
        answer.ms
        for answer in answers
        if answer.kind == kind and answer.good and start <= answer.start < end
    )
    if not latencies:
        return math.nan
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def swap_windows(answers: Sequence[Answer], at: float) -> tuple[float, float, int, int]:
    """(p99 in the `WINDOW_S` centred on `at`, p99 in the `WINDOW_S` before that, and how many
    single images each counts)."""
    half = WINDOW_S / 2
    around = (at - half, at + half)
    before = (at - half - WINDOW_S, at - half)

    def count(window: tuple[float, float]) -> int:
        lo, hi = window
        return sum(1 for a in answers if a.kind == "single" and a.good and lo <= a.start < hi)

    return p99_ms(answers, *around), p99_ms(answers, *before), count(around), count(before)


def sliding_ratios(answers: Sequence[Answer], start: float, end: float) -> list[float]:
    """`swap_windows`'s ratio (around / before) centred on every second from `start` + 15 s to
    `end` - 5 s, swap or not: how far this measure moves on its own on this machine."""
    half = WINDOW_S / 2
    ratios = []
    at = start + half + WINDOW_S
    while at <= end - half:
        around, before, _, _ = swap_windows(answers, at)
        if not math.isnan(around / before):
            ratios.append(around / before)
        at += 1.0
    return ratios
