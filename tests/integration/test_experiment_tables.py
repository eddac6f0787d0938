"""`make exp` in a 120-column terminal shows the experiment, the chosen variant and its test
accuracy, where plain `dvc exp show --no-pager` collapses to `… … …`; `ALL=1` prints every column.

Run in a tiny DVC project with this repository's params.yaml, committed metrics files and
top-level `metrics:` list (so the table has the real columns, about 260), one stage that writes
metrics/evaluate.json from a param, and one experiment made with `dvc exp run`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import project
from tests.support.servers import BIN_DIR, REPO_ROOT
from tests.support.workspace import git

EXPERIMENT = "mlp-41-epochs"
LEADING = ["Experiment", "Created", "chosen.variant", "chosen.test_accuracy", "chosen.val_accuracy"]
# metrics/evaluate.json's chosen test accuracy, set from train.models.mlp.fit.epochs.
WRITE_METRICS = """\
import json, yaml
epochs = yaml.safe_load(open("params.yaml"))["train"]["models"]["mlp"]["fit"]["epochs"]
metrics = json.load(open("evaluate.json.in"))
metrics["chosen"]["test_accuracy"] = 0.9 + epochs / 1000
json.dump(metrics, open("metrics/evaluate.json", "w"), indent=2)
"""


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The tiny project after `dvc repro` (committed on main) and one `dvc exp run`."""
    root = tmp_path_factory.mktemp("tables")
    shutil.copytree(REPO_ROOT / "metrics", root / "metrics")
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    shutil.copy(REPO_ROOT / "metrics" / "evaluate.json", root / "evaluate.json.in")
    (root / "write_metrics.py").write_text(WRITE_METRICS)
    evaluate = {
        "cmd": "python write_metrics.py",
        "deps": ["write_metrics.py", "evaluate.json.in"],
        "params": ["train.models.mlp.fit.epochs"],
        "outs": [{"metrics/evaluate.json": {"cache": False}}],
    }
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["metrics"]
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"evaluate": evaluate}, "metrics": declared})
    )
    # Without DVC_NO_ANALYTICS a fresh `dvc init` repository leaves an analytics process behind.
    env = dict(os.environ) | {
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }
    git(root, "init", "--quiet", "--initial-branch", "main")
    project.run(root, "dvc", "init", "--quiet", env=env)
    project.run(root, "dvc", "repro", "--quiet", env=env)
    project.commit_all(root, "tiny project")
    project.run(
        root, "dvc", "exp", "run", "--quiet", "-n", EXPERIMENT,
        "-S", "train.models.mlp.fit.epochs=41", env=env,
    )  # fmt: skip
    return root, env | {"COLUMNS": "120"}


def make_exp(root: Path, env: dict[str, str], *variables: str) -> list[str]:
    """`make exp` of this repository's Makefile, run in `root`; its lines."""
    command = ["make", "-s", "-f", str(REPO_ROOT / "Makefile"), "exp", f"BIN={BIN_DIR}"]
    return project.run(root, *command, *variables, env=env).stdout.splitlines()


def cells(line: str, separator: str | None = None) -> list[str]:
    return [cell.strip() for cell in line.split(separator)] if separator else line.split()


def test_plain_dvc_exp_show_collapses_in_120_columns(tables) -> None:
    """Why `make exp` exists: DVC squeezes every column into the terminal's width."""
    root, env = tables
    shown = project.run(root, "dvc", "exp", "show", "--no-pager", env=env).stdout
    assert "…" in shown and "Experiment" not in shown and EXPERIMENT not in shown


def test_make_exp_fits_120_columns_and_leads_with_the_choice(tables) -> None:
    root, env = tables
    lines = make_exp(root, env)
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    assert "…" not in "\n".join(lines)
    header = next(line for line in lines if "Experiment" in line)
    assert cells(header) == LEADING
    chosen = json.loads((REPO_ROOT / "metrics" / "evaluate.json").read_text())["chosen"]
    rows = {cells(line)[0]: cells(line) for line in lines if line.strip()[:1].isalnum()}
    experiment = cells(next(line for line in lines if f"[{EXPERIMENT}]" in line))
    for row, test_accuracy in ((rows["main"], "0.94"), (experiment, "0.941")):
        variant, shown_test, shown_val = row[-3:]
        assert (variant, shown_test) == (chosen["variant"], test_accuracy)
        assert float(shown_val) == pytest.approx(chosen["val_accuracy"], abs=1e-5)


def test_every_column_is_one_variable_away(tables) -> None:
    root, env = tables
    lines = make_exp(root, env, "ALL=1")
    header = cells(lines[0], "|")[1:-1]
    assert header[:3] == LEADING[:3] and len(header) > 200
    assert set(LEADING) | {"variants.mlp.test_accuracy", "train.models.mlp.fit.epochs"} <= set(
        header
    )
    experiment = cells(next(line for line in lines if f"[{EXPERIMENT}]" in line), "|")[1:-1]
    by_column = dict(zip(header, experiment, strict=True))
    assert by_column["train.models.mlp.fit.epochs"] == "41"
    assert by_column["chosen.test_accuracy"] == "0.941"
    assert by_column["metrics/train/cnn.json:epochs_run"].isdigit()
