"""bench/serve_report.py: the goals issue 37 set, each beside the bound measured in the run."""

from __future__ import annotations

from bench import serve_report
from bench.forward_ceiling import Ceiling
from bench.preprocess_cost import Parts
from bench.serve_driver import Cell


def _cell(kind: str, images: int, requests: int) -> Cell:
    cell = Cell("ours", kind, "/x", 8, images, 4.0)
    cell.requests = requests
    cell.latencies_ms = [10.0] * requests
    return cell


def _goal(goals, start: str):
    (found,) = [goal for goal in goals if goal.goal.startswith(start)]
    return found


def test_batch_goals_say_how_much_of_the_forward_ceiling_was_reached():
    ceiling = Ceiling(multiply_adds=26_000_000, batch=256, ms_per_image=0.6, cores=2)
    cells = [_cell("batch", 256, 32), _cell("oip", 256, 44)]  # 2,048 and 2,816 images/s
    goals = serve_report.batch_goals(cells, ceiling)
    predict = _goal(goals, "/predict batches")
    assert predict.verdict == "MISS"
    assert "61% of the 3,333 images/s the forward pass alone allows on 2 cores" in predict.measured
    assert "84% of the 3,333" in _goal(goals, "OIP").measured
    assert "forward pass" not in _goal(serve_report.batch_goals(cells), "OIP").measured


def test_photo_preprocessing_is_judged_against_its_goal():
    slow = serve_report.preprocess_goal({"photo": Parts(preprocess_ms=0.9, forward_ms=0.7)})
    fast = serve_report.preprocess_goal({"photo": Parts(preprocess_ms=0.3, forward_ms=0.7)})
    assert [goal.verdict for goal in slow + fast] == ["MISS", "PASS"]
    assert slow[0].measured == "0.900 ms"
    assert serve_report.preprocess_goal({"single": Parts(0.3, 0.7)}) == []


def test_ready_goal_names_the_bare_service_and_misses_above_the_limit():
    (ready, _memory) = serve_report.server_goals(
        {"ours": 2.9, "bare": 2.4}, {"ours": {"rss": 500 * 2**20, "pss": 400 * 2**20}}
    )
    assert ready.verdict == "MISS"
    assert "a bare BentoML service, same workers: 2.4 s" in ready.measured
    (quick, _memory) = serve_report.server_goals(
        {"ours": 1.2}, {"ours": {"rss": 500 * 2**20, "pss": 400 * 2**20}}
    )
    assert quick.verdict == "PASS"
