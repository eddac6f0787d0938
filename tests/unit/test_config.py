"""params.yaml -> typed, frozen config: the repository's file loads; bad input names its key."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pipeline import config

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

# A small valid params.yaml; each error case below breaks one thing in a copy of it.
BASE = {
    "data": {"dataset": "mnist"},
    "prepare": {"val_fraction": 0.1, "seed": 1},
    "train": {
        "variants": ["mlp", "cnn"],
        "models": {
            "mlp": {"model": {"architecture": "mlp", "dense": [8]}, "fit": {"epochs": 2}},
            "cnn": {
                "model": {"architecture": "cnn", "conv_blocks": [{"filters": 4}], "dense": [8]},
                "fit": {"epochs": 2, "optimizer": "sgd", "momentum": 0.9},
            },
        },
    },
    "evaluate": {"select_by": "val_loss"},
}


def load_dict(tmp_path: Path, raw: dict) -> config.Params:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load(path)


def changed(change) -> dict:
    raw = copy.deepcopy(BASE)
    change(raw)
    return raw


def fit(raw: dict, variant: str = "cnn") -> dict:
    return raw["train"]["models"][variant]["fit"]


def test_repository_params_load():
    params = config.load(REPO_PARAMS)
    assert params.train is not None and params.train.variants
    for variant in params.train.variants:
        variant_config = params.train.models[variant]
        assert variant_config.model.architecture in ("mlp", "cnn")
        assert isinstance(variant_config.fit, config.FitConfig)
    assert params.evaluate.select_by in ("val_accuracy", "val_loss")


def test_base_loads_into_typed_frozen_config_with_defaults(tmp_path):
    params = load_dict(tmp_path, BASE)
    cnn = params.train.models["cnn"]
    assert cnn.model.conv_blocks == (config.ConvBlockConfig(filters=4),)
    assert cnn.model.dense == (8,)
    assert cnn.fit == config.FitConfig(epochs=2, optimizer="sgd", momentum=0.9)
    assert params.train.variants == ("mlp", "cnn")
    assert params.registered_model == "mnist-classifier"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cnn.fit.epochs = 3  # type: ignore[misc]


def test_int_is_accepted_for_float(tmp_path):
    raw = changed(lambda raw: fit(raw).update(learning_rate=1, label_smoothing=0))
    learning_rate = load_dict(tmp_path, raw).train.models["cnn"].fit.learning_rate
    assert learning_rate == 1.0 and isinstance(learning_rate, float)


def test_unknown_dataset_with_folder_and_class_names_is_accepted(tmp_path):
    data = {"dataset": "kmnist", "local_dir": "/data/kmnist", "class_names": ["a", "b"]}
    params = load_dict(tmp_path, changed(lambda raw: raw.update(data=data)))
    assert params.data.resolved_class_names == ("a", "b")
    assert params.registered_model == "kmnist-classifier"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda raw: fit(raw).update(epoch=3),
            r"unknown key(s) ['train.models.cnn.fit.epoch']",
            id="unknown-nested-key",
        ),
        pytest.param(
            lambda raw: raw.update(trian={}), r"unknown key(s) ['trian']", id="unknown-section"
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].update(layers=[8]),
            "['train.models.mlp.model.layers']",
            id="unknown-model-key",
        ),
        pytest.param(
            lambda raw: fit(raw).update(epochs="3"),
            "train.models.cnn.fit.epochs: expected int, got str '3'",
            id="string-for-int",
        ),
        pytest.param(
            lambda raw: fit(raw).update(epochs=True),
            "train.models.cnn.fit.epochs: expected int, got bool True",
            id="bool-for-int",
        ),
        pytest.param(
            lambda raw: fit(raw).update(batch_size=32.0),
            "train.models.cnn.fit.batch_size: expected int, got float 32.0",
            id="float-for-int",
        ),
        pytest.param(
            lambda raw: fit(raw).update(learning_rate="fast"),
            "train.models.cnn.fit.learning_rate: expected float, got str 'fast'",
            id="string-for-float",
        ),
        pytest.param(
            lambda raw: fit(raw).update(mixed_precision="yes"),
            "train.models.cnn.fit.mixed_precision: expected bool, got str 'yes'",
            id="string-for-bool",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["cnn"]["model"]["conv_blocks"][0].update(
                filters="4"
            ),
            "train.models.cnn.model.conv_blocks[0].filters: expected int",
            id="list-item-field",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].update(dense=8),
            "train.models.mlp.model.dense: expected a list",
            id="scalar-for-list",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["cnn"]["model"].update(padding="full"),
            "train.models.cnn.model.padding: 'full' is not one of ['same', 'valid']",
            id="unknown-padding",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].update(output_activation="relu"),
            "model.output_activation: 'relu' is not one of ['softmax', 'sigmoid']",
            id="unknown-output-activation",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].update(head_dropout=1.0),
            "train.models.mlp.model: model.head_dropout must be in [0, 1), got 1.0",
            id="head-dropout-range",
        ),
        pytest.param(
            lambda raw: fit(raw).update(optimizer="adamm"),
            "train.models.cnn.fit.optimizer: 'adamm' is not one of",
            id="literal-optimizer",
        ),
        pytest.param(
            lambda raw: raw["evaluate"].update(select_by="test_accuracy"),
            "evaluate.select_by: 'test_accuracy' is not one of ['val_accuracy', 'val_loss']",
            id="literal-select-by",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].pop("architecture"),
            "train.models.mlp.model: missing required key 'architecture'",
            id="missing-architecture",
        ),
        pytest.param(
            lambda raw: raw["train"].pop("variants"),
            "train: missing required key 'variants'",
            id="missing-variants",
        ),
        pytest.param(
            lambda raw: raw["data"].update(dataset="kmnist"),
            "data.dataset: 'kmnist' is not a known dataset",
            id="unknown-dataset-without-local-dir",
        ),
        pytest.param(
            lambda raw: raw["data"].update(class_names=["a", "b", "a"]),
            "data.class_names: names must be unique",
            id="duplicate-class-names",
        ),
        pytest.param(
            lambda raw: raw["train"].update(variants=["mlp", "resnet"]),
            "train.variants lists ['resnet'], which train.models does not define",
            id="undefined-variant",
        ),
        pytest.param(
            lambda raw: raw["prepare"].update(val_fraction=1.0),
            "prepare.val_fraction must be in (0, 1), got 1.0",
            id="val-fraction-one",
        ),
        pytest.param(
            lambda raw: raw["prepare"].update(val_fraction=0),
            "prepare.val_fraction must be in (0, 1), got 0.0",
            id="val-fraction-zero",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["cnn"]["model"].update(conv_blocks=[]),
            "model.conv_blocks: a cnn needs at least one conv block",
            id="cnn-without-conv-blocks",
        ),
        pytest.param(
            lambda raw: raw["train"]["models"]["mlp"]["model"].update(dropout=1.0),
            "model.dropout must be in [0, 1)",
            id="dropout-one",
        ),
        pytest.param(
            lambda raw: fit(raw).update(epochs=0),
            "fit.epochs must be positive, got 0",
            id="zero-epochs",
        ),
        pytest.param(
            lambda raw: raw.update(
                monitor={"checks": {"confidence": {"test": "ks", "threshold": 7}}}
            ),
            "monitor.checks.confidence.threshold: a ks p-value threshold must be in (0, 1), got 7",
            id="p-value-threshold-above-one",
        ),
        pytest.param(
            lambda raw: raw.update(monitor={"min_predictions": 0}),
            "monitor.min_predictions must be at least 1, got 0",
            id="no-minimum-of-predictions",
        ),
        pytest.param(
            lambda raw: raw.update(evaluate=None),
            "evaluate: expected a mapping",
            id="empty-section",
        ),
    ],
)
def test_invalid_params_name_the_key(tmp_path, change, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)) as error:
        load_dict(tmp_path, changed(change))
    # Every message starts with the file, so a user knows which params.yaml to fix.
    assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: ")


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_the_serving_budget_names_what_is_exceeded() -> None:
    budget = config.BudgetConfig(max_latency_ms=20, max_file_mib=1, max_session_mib=None)
    costs = {"latency_ms": 25.0, "file_mib": 0.5, "session_mib": 900.0}
    assert budget.exceeded(costs) == ["latency 25 ms > 20 ms"]
    assert config.BudgetConfig().exceeded(costs) == []
    with pytest.raises(
        config.ConfigError, match=r"evaluate\.budget\.max_file_mib must be positive"
    ):
        config.BudgetConfig(max_file_mib=0)
