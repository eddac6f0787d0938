"""The `sweep:` section: every bad setting is an error naming its dotted key, before any work;
the space applied to a variant; the ranking and the command that adopts the winner."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.sweep import driver as sweep
from pipeline.sweep import record as sweep_record
from pipeline.sweep import settings as sweep_settings
from pipeline.sweep import space as sweep_space
from tests.support.workspace import TINY_VARIANTS

GOOD = {
    "trials": 4,
    "space": {
        "fit.learning_rate": {"kind": "loguniform", "low": 0.001, "high": 0.01},
        "fit.batch_size": {"kind": "choice", "values": [16, 32]},
        "model.dropout": {"kind": "uniform", "low": 0.0, "high": 0.3},
    },
}


def write(tmp_path: Path, sweep_section: dict) -> Path:
    params = {"train": {"variants": ["cnn"], "models": copy.deepcopy(TINY_VARIANTS)}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params | {"sweep": sweep_section}))
    return path


def test_a_good_section_loads(tmp_path: Path):
    loaded = sweep_settings.load(write(tmp_path, GOOD))
    assert loaded.trials == 4
    assert loaded.space["fit.batch_size"].values == (16, 32)
    assert loaded.early_stopping.enabled and loaded.address is None


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"trails": 3}, "sweep.trails"),
        ({"trials": 0}, "sweep.trials"),
        ({"early_stopping": {"grace": 1}}, "sweep.early_stopping.grace"),
        ({"early_stopping": {"reduction_factor": 1}}, "sweep.early_stopping.reduction_factor"),
        ({"cpus_per_trial": 0}, "sweep.cpus_per_trial"),
        (
            {"space": {"fit.lerning_rate": {"kind": "choice", "values": [1]}}},
            "sweep.space.fit.lerning_rate",
        ),
        (
            {"space": {"fit.batch_size": {"kind": "choice", "values": [16, "big"]}}},
            "sweep.space.fit.batch_size.values[1]",
        ),
        (
            {"space": {"fit.batch_size": {"kind": "uniform", "low": 8, "high": 64}}},
            "sweep.space.fit.batch_size.low",
        ),
        (
            {"space": {"fit.learning_rate": {"kind": "uniform", "low": 0.1, "high": 0.01}}},
            "sweep.space.fit.learning_rate",
        ),
        (
            {"space": {"fit.learning_rate": {"kind": "loguniform", "low": 0.0, "high": 0.01}}},
            "sweep.space.fit.learning_rate",
        ),
        (
            {"space": {"fit.learning_rate": {"kind": "normal", "low": 0.0, "high": 0.01}}},
            "sweep.space.fit.learning_rate.kind",
        ),
        ({"space": {"fit.epochs": {"kind": "choice"}}}, "sweep.space.fit.epochs"),
    ],
)
def test_bad_settings_name_the_dotted_key(tmp_path: Path, change: dict, key: str):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        sweep_settings.load(write(tmp_path, GOOD | change))


def test_values_that_break_the_variant_are_refused_before_any_work(tmp_path: Path):
    """A dropout of 1 passes the section's own checks but not the variant's: the sweep stops
    with the key before reading data (there is none here) or starting Ray."""
    bad = GOOD | {"space": {"model.dropout": {"kind": "choice", "values": [0.1, 1.0]}}}
    path = write(tmp_path, bad)
    argv = ["--variant=cnn", f"--params={path}", f"--data={tmp_path / 'missing'}"]
    with pytest.raises(SystemExit, match=r"sweep\.space\.model\.dropout.*1\.0"):
        sweep.main(argv)
    assert not (tmp_path / "sweeps").exists()


def test_trial_variant_applies_overrides_and_rechecks():
    cnn = config.build(config.VariantConfig, TINY_VARIANTS["cnn"], "train.models.cnn")
    changed = sweep_space.trial_variant(
        "cnn", cnn, {"fit.learning_rate": 0.005, "model.dense": [8, 4]}
    )
    assert changed.fit.learning_rate == 0.005 and changed.model.dense == (8, 4)
    assert changed.model.conv_blocks == cnn.model.conv_blocks
    with pytest.raises(config.ConfigError, match=r"train\.models\.cnn"):
        sweep_space.trial_variant("cnn", cnn, {"fit.batch_size": 0})


def outcome(trial: str, status: str, accuracy: float | None, **overrides) -> sweep_record.Outcome:
    found = sweep_record.Outcome(trial, overrides or {"fit.learning_rate": 0.01})
    found.status, found.val_accuracy = status, accuracy
    return found


def test_the_best_completed_trial_wins_and_its_command_adopts_it():
    outcomes = {
        "a": outcome("a", sweep_record.STOPPED, 0.99),
        "b": outcome("b", sweep_record.COMPLETED, 0.8, **{"fit.learning_rate": 0.002}),
        "c": outcome(
            "c", sweep_record.COMPLETED, 0.9, **{"model.dense": (8, 4), "fit.jit_compile": True}
        ),
        "d": outcome("d", sweep_record.FAILED, None),
    }
    order = sweep_record.ranked(outcomes)
    assert [o.trial_id for o in order] == ["c", "b", "a", "d"]
    chosen = sweep_record.best(order, variant="cnn", parent_run_id="p")
    assert chosen["trial_id"] == "c"
    assert chosen["command"] == [
        "dvc",
        "exp",
        "run",
        "-S",
        "++train.models.cnn.fit.jit_compile=true",
        "-S",
        "++train.models.cnn.model.dense=[8,4]",
    ]
    table = sweep_record.table(order).splitlines()
    assert table[0].startswith("rank,trial_id,status,val_accuracy")
    assert table[1].startswith("1,c,completed,0.900000")
    # Nothing completed: no winner, whatever a stopped trial reached.
    assert (
        sweep_record.best(
            sweep_record.ranked({"a": outcomes["a"]}), variant="cnn", parent_run_id="p"
        )
        is None
    )
