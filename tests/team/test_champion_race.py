"""Two evaluations on two machines, one tracking server: `champion` ends on the best version
whatever the order of finishing, and no model is registered twice."""

from __future__ import annotations

import multiprocessing
import queue
import threading

import pytest

from tests.support import race
from tests.team.conftest import TeamServer

pytestmark = [pytest.mark.team, pytest.mark.slow]
ROUNDS = 20
NAME = "race-classifier"
TIMEOUT = 300.0


def accuracies(rounds: int) -> tuple[list[int], list[int]]:
    """Correct answers (of 100) per round for the two workers: mostly both better than anything
    before (so both pass the gate against the same champion), every fourth round both worse."""
    first, second = [], []
    for round_ in range(rounds):
        if round_ % 4 == 3:
            pair = (1 + 2 * round_ // 4, 2 + 2 * round_ // 4)
        else:
            pair = (30 + 3 * round_, 31 + 3 * round_)
        # Which of the two is the better one alternates, so either may finish last.
        low, high = pair
        first.append(high if round_ % 2 else low)
        second.append(low if round_ % 2 else high)
    return first, second


def test_two_machines_racing_leave_champion_on_the_best(team_server: TeamServer, tmp_path):
    client = team_server.client()
    context = multiprocessing.get_context("spawn")
    barrier, failures = context.Barrier(3), context.Queue()
    plans = dict(zip(("a", "b"), accuracies(ROUNDS), strict=True))
    workers = [
        context.Process(
            target=race.worker,
            args=(label, race.workspace(tmp_path / label), team_server.url, NAME, corrects),
            kwargs={"barrier": barrier, "failures": failures, "timeout": TIMEOUT},
        )
        for label, corrects in plans.items()
    ]
    for process in workers:
        process.start()
    try:
        barrier.wait(TIMEOUT)  # both have logged their models
        for round_ in range(ROUNDS):
            barrier.wait(TIMEOUT)  # released together
            barrier.wait(TIMEOUT)  # both done
            versions = client.search_model_versions(f"name = '{NAME}'")
            best = max(float(version.tags["test_accuracy"]) for version in versions)
            champion = client.get_model_version_by_alias(NAME, "champion")
            assert float(champion.tags["test_accuracy"]) == best, f"round {round_}"
            assert len(versions) == 2 * (round_ + 1)
    except threading.BrokenBarrierError:
        raise AssertionError(worker_failures(failures)) from None
    except AssertionError:
        barrier.abort()  # the workers stop at their next wait
        raise
    finally:
        for process in workers:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    runs = [version.run_id for version in client.search_model_versions(f"name = '{NAME}'")]
    assert len(runs) == len(set(runs)) == 2 * ROUNDS
    assert float(champion.tags["test_accuracy"]) == max(max(plan) for plan in plans.values()) / 100


def worker_failures(failures) -> str:
    """What the workers reported before they broke the barrier."""
    reported = []
    while True:
        try:
            reported.append(failures.get(timeout=5))
        except queue.Empty:
            return "\n".join(reported) or "a worker stopped without a report"
