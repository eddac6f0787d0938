"""What a user's commands leave behind and where they listen: `make ui` takes a port like
`make serve` and `make docs`, and `dvc plots show`'s page stays out of git."""

from __future__ import annotations

import subprocess

import numpy as np
import yaml

from pipeline import figures
from tests.support.servers import REPO_ROOT


def dry_run(*arguments: str) -> str:
    """What `make` would run, without running it."""
    result = subprocess.run(
        ["make", "-n", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_ui_takes_a_port_like_serve_and_docs() -> None:
    assert "--host 127.0.0.1 --port 5000" in dry_run("ui")
    moved = dry_run("ui", "UI_PORT=5123")
    assert "--host 127.0.0.1 --port 5123" in moved and "http://127.0.0.1:5123/" in moved


def test_dvc_plots_pages_are_ignored_by_git() -> None:
    for path in ("dvc_plots/index.html", "dvc_plots/static/a.png"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_the_confusion_plot_has_the_png_convention() -> None:
    """plots/evaluate/confusion.json is drawn like confusion_matrix.png (pipeline.figures):
    predicted class across, actual (true) class down."""
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    plots = {
        next(iter(item)): item[next(iter(item))]
        for item in stage["plots"]
        if isinstance(item, dict)
    }
    confusion = plots["plots/evaluate/confusion.json"]
    assert (confusion["x"], confusion["y"]) == ("predicted", "actual")
    figure = figures.confusion_figure(np.eye(2, dtype=int), ("a", "b"), "test")
    axis = figure.axes[0]
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("predicted", "true")
