"""The hand-off files: every contract survives a round trip; a wrong file fails where it is read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline import contracts

SOURCE = contracts.Source(kind="local_dir", location="/data/kmnist")
TRAIN_METRICS = contracts.TrainMetrics(
    final_val_loss=0.31,
    final_val_accuracy=0.9,
    epochs_run=3,
    train_seconds=1.5,
    best_val_accuracy=0.91,
)
VARIANT_METRICS = contracts.VariantMetrics(
    val_accuracy=0.9,
    val_loss=0.3,
    test_accuracy=0.89,
    test_loss=0.33,
    test_macro_f1=0.88,
    temperature=0.8,
    test_ece=0.04,
    test_ece_calibrated=0.01,
    test_loss_calibrated=0.31,
)
EXAMPLES = {
    "manifest": contracts.RawManifest(
        dataset="kmnist",
        class_names=("o", "ki"),
        source=SOURCE,
        tried=(contracts.Attempt(source=contracts.Source("system", "/usr/x"), error="absent"),),
        files={
            "train_images": contracts.RawFile("train-images-idx3-ubyte", "ab" * 32, (5, 28, 28))
        },
        counts={"train": 5, "test": 2},
    ),
    "meta": contracts.PreparedMeta(
        dataset="kmnist",
        source=SOURCE,
        class_names=("o", "ki"),
        sha256={"train_images": "ab" * 32},
        counts={"train": 4, "val": 1, "test": 2},
        val_fraction=0.2,
        seed=3,
    ),
    "train-metrics": TRAIN_METRICS,
    "run": contracts.TrainedRun(
        variant="mlp",
        run_id="r1",
        experiment_id="7",
        model_uri="models:/m-1",
        tracking_uri="sqlite:////tmp/mlflow.db",
        metrics=TRAIN_METRICS,
    ),
    "evaluate-metrics": contracts.EvaluateMetrics(
        variants={"mlp": VARIANT_METRICS},
        chosen=contracts.Chosen(
            variant="mlp", version=2, promoted=False, **dataclasses.asdict(VARIANT_METRICS)
        ),
    ),
    "champion": contracts.Champion(
        registered_model="kmnist-classifier",
        version=1,
        model_uri="models:/kmnist-classifier/1",
        alias_uri="models:/kmnist-classifier@champion",
        variant=None,
        run_id="r0",
        class_names=("o", "ki"),
        metrics={"test_accuracy": 0.9},
        tracking_uri="http://mlflow:5000",
        candidate=contracts.Candidate(variant="mlp", version=2, promoted=False, reason="why"),
    ),
}


@pytest.mark.parametrize("record", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_write_then_read_gives_the_same_record(record: contracts.Contract, tmp_path: Path):
    path = tmp_path / "deep" / "file.json"
    record.write(path)
    assert type(record).read(path) == record
    # Plain JSON that other tools (dvc metrics show, jq) read as usual.
    assert json.loads(path.read_text()) == json.loads(json.dumps(dataclasses.asdict(record)))


def test_non_ascii_class_names_are_written_as_utf8(tmp_path: Path):
    meta = dataclasses.replace(EXAMPLES["meta"], class_names=("お", "き"))
    meta.write(tmp_path / "meta.json")
    assert '"お"' in (tmp_path / "meta.json").read_text(encoding="utf-8")
    assert contracts.PreparedMeta.read(tmp_path / "meta.json").class_names == ("お", "き")


def written(record: contracts.Contract, tmp_path: Path, change) -> Path:
    """`record` as JSON, with `change` applied to the parsed data first."""
    data = json.loads(json.dumps(dataclasses.asdict(record)))
    change(data)
    path = tmp_path / "file.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("meta", lambda d: d.update(datset="x"), r"unknown key\(s\) \['datset'\]"),
        ("meta", lambda d: d.pop("seed"), r"missing required key 'seed'"),
        ("meta", lambda d: d.update(seed="3"), r"seed: expected int, got str"),
        ("run", lambda d: d["metrics"].pop("epochs_run"), r"metrics: missing required key"),
        ("manifest", lambda d: d["source"].update(url="x"), r"\['source\.url'\]"),
        ("champion", lambda d: d["candidate"].pop("reason"), r"candidate: missing.*'reason'"),
    ],
)
def test_unknown_missing_or_mistyped_key_names_file_key_and_writer(
    name: str, change, message: str, tmp_path: Path
):
    record = EXAMPLES[name]
    path = written(record, tmp_path, change)
    with pytest.raises(contracts.ContractError, match=message) as error:
        type(record).read(path)
    assert str(path) in str(error.value)
    assert f"stage `{record.writer}`" in str(error.value)


def test_missing_file_names_the_stage_to_run(tmp_path: Path):
    with pytest.raises(contracts.ContractError, match=r"meta\.json is missing; stage `prepare`"):
        contracts.PreparedMeta.read(tmp_path / "meta.json")


def test_a_file_that_is_not_json_is_a_contract_error(tmp_path: Path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(contracts.ContractError, match="not valid JSON"):
        contracts.TrainedRun.read(tmp_path / "run.json")


def test_contract_errors_are_value_errors():
    assert issubclass(contracts.ContractError, ValueError)


def test_prepared_meta_digests_the_four_checksums():
    meta = EXAMPLES["meta"]
    other = dataclasses.replace(meta, sha256={"train_images": "cd" * 32})
    assert len(meta.content_sha256) == 64
    assert meta.content_sha256 != other.content_sha256
    assert dataclasses.replace(meta, seed=9).content_sha256 == meta.content_sha256


def test_manifest_sha256_is_by_role():
    assert EXAMPLES["manifest"].sha256 == {"train_images": "ab" * 32}
