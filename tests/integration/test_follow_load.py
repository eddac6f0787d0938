"""Issue 35 under steady load, with real components: a registry (an `mlflow server` that sends
signed webhooks, or the SQLite store that the sidecar polls), the sidecar `python -m
serving.tools.follow`, and `bentoml serve` with two workers following it. Sixteen clients send
single images and 256-image batches back to back while `champion` moves to v2 and v3 (as
`evaluate` moves it) and the rollback command puts v2 back: no request goes unanswered or gets a
non-2xx, every answer is one version's, which a worker served during the request and which held
the alias during it (allowing for the time the goal gives the service to hear of a move), and every
worker serves the new version within 2 s of the move with webhooks, within the poll interval plus
2 s with polling. The load lasts 68 s (webhook) and 83 s (polling) plus the rollback command's
time, 9-29 s on a busy 2-core machine; each mode costs about 2 minutes of CI time (114 s and
140 s there), most of it the load itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import follow_stack, swap_load, swap_timeline

pytestmark = pytest.mark.slow
SAMPLES = 5


def described(answers: list[swap_load.Answer]) -> str:
    """A few answers, for a failure message."""
    return "\n".join(
        f"  {a.kind} {a.start:.3f}-{a.end:.3f} status {a.status} versions {a.versions} {a.problem}"
        for a in answers[:SAMPLES]
    ) + (f"\n  ... {len(answers) - SAMPLES} more" if len(answers) > SAMPLES else "")


@pytest.mark.parametrize("mode", follow_stack.MODES)
def test_the_service_follows_champion_under_steady_load(mode: str, tmp_path: Path):
    with follow_stack.followed_service(mode, tmp_path) as service:
        run = swap_load.run_scenario(service)
        log = swap_timeline.served(service.serve.output())
        follower_log = service.follower.output()
        goal = service.goal_s
        champion = swap_timeline.champion_spans(service.initial, run.moves)
    # Every request, kept beside the logs for a look after a failure.
    run.save(tmp_path / "answers.json")
    assert [(move.kind, move.version) for move in run.moves] == [
        ("promote", "2"),
        ("promote", "3"),
        ("rollback", "2"),
    ]
    if mode == "webhook":
        # Its own rounds are ten minutes apart: the moves reached it by webhook.
        assert "registered the webhook" in follower_log, follower_log[-3000:]
    answers = run.answers
    kinds = {kind: sum(a.kind == kind for a in answers) for kind in ("single", "batch")}
    assert kinds["single"] > 1000 and kinds["batch"] > 20, kinds
    lost = swap_timeline.lost(answers)
    assert not lost, f"{len(lost)} of {len(answers)} requests lost:\n{described(lost)}"
    assert len(log.workers) == 2 and not log.restarted, (log.workers, log.restarted)
    unserved = swap_timeline.not_served(answers, log.spans)
    assert not unserved, f"answered by a version no worker served then:\n{described(unserved)}"
    off = swap_timeline.off_champion(answers, champion, allowance=goal)
    assert not off, f"answered by a version that was not champion then:\n{described(off)}"
    assert {a.versions[0] for a in answers} == {"1", "2", "3"}
    for swap in swap_timeline.swaps(answers, run.moves, log, goal_s=goal, pointed=run.pointed):
        assert swap.every_worker_s is not None and swap.every_worker_s <= goal, swap
        assert swap.first_answer_s is not None and swap.first_answer_s <= goal, swap
        assert swap.stale == 0, swap
