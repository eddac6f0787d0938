"""The judge of the steady-load swap test (`tests/support/swap_timeline.py`): the service's log read
into each worker's spans, and answers set against them and against the alias's history."""

from __future__ import annotations

import math

import pytest

from tests.support import swap_timeline
from tests.support.follow_stack import Move
from tests.support.swap_load import Answer

# 2026-12-07T03:00:10Z and 03:00:11.5Z as epoch seconds.
T10, T11_5 = 1796612410.0, 1796612411.5
LOG = """\
2026-12-07T03:00:00+0000 [INFO] [entry_service:classifier:1] serving m v1 (m:v1)
2026-12-07T03:00:01+0000 [INFO] [entry_service:classifier:2] serving m v1 (m:v1)
2026-12-07T03:00:10+0000 [INFO] [entry_service:classifier:2] now serving m v2 (m:v2) since \
2026-12-07T03:00:10.000+00:00
2026-12-07T03:00:11+0000 [INFO] [entry_service:classifier:1] now serving m v2 (m:v2) since \
2026-12-07T03:00:11.500+00:00
"""


def answer(start: float, end: float, version: str, kind: str = "single") -> Answer:
    return Answer(kind, start, end, 200, (version,))


def test_the_log_gives_each_worker_its_spans():
    served = swap_timeline.served(LOG)
    assert served.workers == ["1", "2"] and served.restarted == []
    spans = {(span.holder, span.version): (span.start, span.end) for span in served.spans}
    assert spans == {
        ("1", "1"): (-math.inf, T11_5),
        ("1", "2"): (T11_5, math.inf),
        ("2", "1"): (-math.inf, T10),
        ("2", "2"): (T10, math.inf),
    }
    restarted = LOG + LOG.splitlines()[0].replace("03:00:00", "03:00:20") + "\n"
    assert swap_timeline.served(restarted).restarted == ["1"]


@pytest.mark.parametrize(
    ("start", "end", "version", "right"),
    [
        (T10 - 5, T10 - 4, "1", True),
        (T10 + 1, T10 + 1.1, "1", True),  # worker 1 still served v1 then
        (T11_5 + 0.1, T11_5 + 0.2, "1", False),  # no worker did
        (T10 - 1, T10 - 0.5, "2", False),  # before any worker swapped
        (T10 - 1, T10 + 0.1, "2", True),  # in flight across worker 2's swap
    ],
)
def test_an_answer_is_right_when_a_worker_served_its_version_during_it(start, end, version, right):
    spans = swap_timeline.served(LOG).spans
    found = swap_timeline.not_served([answer(start, end, version)], spans)
    assert (found == []) is right


def test_an_answer_is_on_champion_within_the_allowance_after_a_move():
    initial = Move("initial", "1", 0.0, 0.0)
    spans = swap_timeline.champion_spans(initial, [Move("promote", "2", T10, T10 + 0.2)])
    late = answer(T10 + 1.5, T10 + 1.6, "1")
    assert swap_timeline.off_champion([late], spans, allowance=2.0) == []
    assert swap_timeline.off_champion([late], spans, allowance=1.0) == [late]
    early = answer(T10 - 3, T10 - 2.9, "2")
    assert swap_timeline.off_champion([early], spans, allowance=2.0) == [early]


def test_a_swap_is_measured_from_the_alias_change():
    moves = [Move("promote", "2", T10 - 1, T10 - 0.9), Move("promote", "3", T10 + 20, T10 + 20)]
    answers = [
        answer(T10 - 0.5, T10 + 0.3, "2"),  # the first answer by v2: 1.3 s after the move
        answer(T10 + 1.6, T10 + 1.7, "1"),  # after the 2 s goal, yet v1: stale
        answer(T10 + 19.9, T10 + 21, "3", kind="batch"),  # spans the next move: not stale
    ]
    pointed = [(T10 - 0.4, "m:v2")]
    swap, _ = swap_timeline.swaps(
        answers, moves, swap_timeline.served(LOG), goal_s=2.0, pointed=pointed
    )
    assert swap.pointed_s == pytest.approx(0.6)
    assert swap.first_answer_s == pytest.approx(1.3)
    assert swap.workers_s == pytest.approx({"1": 2.5, "2": 1.0})
    assert swap.every_worker_s == pytest.approx(2.5)
    assert swap.stale == 1
