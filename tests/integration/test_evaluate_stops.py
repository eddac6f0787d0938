"""A stop (SIGTERM, Ctrl-C) at several points of a real `evaluate` process: every training run
keeps its status and end time, the outputs are all there or none is, and the exit code is
128 + the signal. The stop while the chosen run is resumed is in test_evaluate.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from pipeline import contracts
from tests.integration.test_evaluate import REPO, stage_argv, trained_mlp
from tests.support import store_peek
from tests.support.workspace import Workspace

OUTPUTS = ("models/champion.json", "metrics/evaluate.json", "plots/evaluate")
TIMEOUT = 120.0
# The registered model of the workspace params (tests.support.workspace.write_params).
NAME = "synthetic-classifier"


class Stage:
    """`python -m pipeline.stages.evaluate` in `root`, its standard error read as it comes."""

    def __init__(self, root: Path, stages: dict, tracking_uri: str) -> None:
        command = [sys.executable, "-m", "pipeline.stages.evaluate"]
        command += stage_argv(stages["evaluate"]["cmd"], "pipeline.stages.evaluate")
        environment = os.environ | {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri}
        self.process = subprocess.Popen(
            command, cwd=root, env=environment, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            assert self.process.poll() is None, f"ended before {what}:\n{self.stderr[-3000:]}"
            time.sleep(0.01)
        raise AssertionError(f"no {what} within {TIMEOUT} s")

    def line(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=TIMEOUT)
        finally:
            self.process.kill()
        self.reader.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def registered(tracking_uri: str) -> bool:
    """Whether the registered model has a version (asked every 10 ms while evaluate runs)."""
    query = "SELECT 1 FROM model_versions WHERE name = ? LIMIT 1"
    return store_peek.first_row(tracking_uri, query, NAME) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "signum"),
    [
        ("loaded", signal.SIGTERM),
        ("scored", signal.SIGINT),
        ("registering", signal.SIGTERM),
    ],
)
def test_a_stop_anywhere_in_evaluate_leaves_runs_and_outputs_whole(
    workspace: Workspace, prepared: Path, sqlite_store: str, point: str, signum: int
):
    root = workspace.root
    stages = trained_mlp(root, prepared)
    run_id = contracts.TrainedRun.read(root / "models" / "mlp" / "run.json").run_id
    client = mlflow.MlflowClient(sqlite_store)
    before = client.get_run(run_id).info
    stage = Stage(root, stages, sqlite_store)
    ready = {
        # Models loaded, nothing scored yet.
        "loaded": lambda: stage.line(r"variant\(s\) loaded"),
        # The variant scored; its results are being logged to its run.
        "scored": lambda: stage.line(r"^mlp: val_accuracy"),
        # The version exists: the stage is registering or writing its outputs.
        "registering": lambda: registered(sqlite_store),
    }[point]
    stage.wait_for(ready, point)
    code = stage.stop(signum)

    assert code == 128 + signum, stage.stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stage.stderr
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
    leftovers = [path.name for path in root.rglob(".*.tmp")]
    assert leftovers == [], leftovers
    if point != "registering":
        assert "nothing was registered or written" in stage.stderr
        assert client.search_registered_models() == []
        for output in OUTPUTS:
            assert not (root / output).exists(), output
        return
    # Begun registering: it finished, so every output is there and names the registered version.
    assert "every output are complete" in stage.stderr
    champion = contracts.Champion.read(root / "models" / "champion.json")
    assert champion.run_id == run_id
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == str(champion.version)
    assert (root / "metrics" / "evaluate.json").exists()
    for plot in ("confusion.json", "confusion_matrix.png", "misclassified.png", "reliability.png"):
        assert (root / "plots" / "evaluate" / plot).exists(), plot
