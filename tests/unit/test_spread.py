"""`serving.spread.Board`: what each worker of a server is told about the others' connections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving import worker_figures
from serving.spread import SLOTS, Board


def test_a_worker_alone_on_the_board_always_accepts(tmp_path: Path) -> None:
    board = Board(tmp_path / "board", 1)
    board.publish(5)
    assert board.may_accept(5)


def test_a_worker_holding_more_than_another_waits(tmp_path: Path) -> None:
    first, second = Board(tmp_path / "board", 1), Board(tmp_path / "board", 2)
    first.publish(0)
    second.publish(0)
    assert first.may_accept(0) and second.may_accept(0)
    first.publish(1)
    assert not first.may_accept(1)
    assert second.may_accept(0)
    second.publish(1)
    assert first.may_accept(1) and second.may_accept(1)


def test_a_worker_that_left_or_never_came_does_not_hold_the_others_back(tmp_path: Path) -> None:
    first, second = Board(tmp_path / "board", 1), Board(tmp_path / "board", 3)
    first.publish(4)
    second.publish(0)
    assert not first.may_accept(4)
    second.leave()
    assert first.may_accept(4)


def test_a_worker_that_starts_again_clears_its_predecessors_slot(tmp_path: Path) -> None:
    first = Board(tmp_path / "board", 1)
    Board(tmp_path / "board", 2).publish(0)
    first.publish(3)
    assert not first.may_accept(3)
    Board(tmp_path / "board", 2)  # the worker restarted, not accepting yet
    assert first.may_accept(3)


def test_a_worker_that_died_without_leaving_does_not_hold_the_others_back(tmp_path: Path) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    first = Board(tmp_path / "board", 1)
    Board(tmp_path / "board", 2, pid=int(ended.stdout)).publish(0)
    first.publish(3)
    assert first.may_accept(3)


@pytest.mark.parametrize("index", [0, SLOTS + 1])
def test_a_worker_index_without_a_slot_is_refused(tmp_path: Path, index: int) -> None:
    with pytest.raises(ValueError, match="worker index"):
        Board(tmp_path / "board", index)


def test_the_board_is_private_and_never_follows_a_link(tmp_path: Path) -> None:
    Board(tmp_path / "board", 1)
    assert (tmp_path / "board").stat().st_mode & 0o077 == 0
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(OSError):
        Board(tmp_path / "link", 1)
    assert not (tmp_path / "elsewhere").exists()


def test_the_per_worker_figures_are_read_back_from_a_metrics_page() -> None:
    page = "\n".join(
        [
            "# HELP classifier_worker_requests_total HTTP requests this worker has read",
            "# TYPE classifier_worker_requests_total counter",
            'classifier_worker_requests_total{worker="1"} 812.0',
            'classifier_worker_requests_total{worker="2"} 790.0',
            'classifier_worker_connections{worker="2"} 4.0',
            'classifier_predictions_total{class_name="Bag",endpoint="predict"} 3.0',
        ]
    )
    assert worker_figures.read(page) == {
        "requests": {"1": 812.0, "2": 790.0},
        "connections": {"2": 4.0},
    }
