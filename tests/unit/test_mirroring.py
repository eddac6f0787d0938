"""Mirror-safe defaults: `auto` mirroring resolves per dataset, and explicit mirroring of data
whose classes change meaning mirrored is reported with the dotted keys to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.data import datasets

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
KMNIST = {
    "dataset": "kmnist",
    "local_dir": "/data/kmnist",
    "class_names": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


def load(tmp_path: Path, data: dict, *, change=None) -> config.Params:
    """The repository's params.yaml with `data` as its data section (and `change` applied)."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["data"] = data
    if change:
        change(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load(path)


def mirroring(params: config.Params, variant: str) -> tuple[bool, bool]:
    chosen = params.train.models[variant]
    return chosen.fit.augment_flip, chosen.model.test_time_flip


def test_the_datasets_say_whether_their_classes_survive_a_mirror():
    assert datasets.mirror_symmetric("fashion_mnist") is True
    assert datasets.mirror_symmetric("mnist") is False
    assert datasets.mirror_symmetric("kmnist") is False  # unknown data: no


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dataset": "fashion_mnist"}, True),
        ({"dataset": "mnist"}, False),
        (KMNIST, False),
        # The user vouches for data we do not know, or overrides a known dataset's answer.
        (KMNIST | {"mirror_symmetric": True}, True),
        ({"dataset": "fashion_mnist", "mirror_symmetric": False}, False),
    ],
    ids=["fashion_mnist", "mnist", "kmnist", "kmnist-declared-symmetric", "fashion-declared-not"],
)
def test_the_default_variants_mirror_only_where_the_data_allows(tmp_path, data, expected):
    params = load(tmp_path, data)
    raw = yaml.safe_load(REPO_PARAMS.read_text())["train"]["models"]
    for variant in params.train.variants:
        # The defaults say `auto`, and the typed config resolves it to a plain boolean.
        assert raw[variant]["fit"]["augment_flip"] == "auto"
        assert raw[variant]["model"]["test_time_flip"] == "auto"
        assert mirroring(params, variant) == (expected, expected)
        assert params.mirroring_warnings(variant) == []
    # Variants that say nothing keep mirroring off, whatever the data.
    assert mirroring(params, "seed003_cnn") == (False, False)


def test_the_repository_params_keep_fashion_mnist_mirrored():
    params = config.load(REPO_PARAMS)
    assert params.data.dataset == "fashion_mnist" and params.data.mirror_symmetric is None
    assert mirroring(params, "mlp") == mirroring(params, "cnn") == (True, True)


def test_mirroring_set_on_for_digits_stays_on_and_is_warned_about(tmp_path):
    def force_on(raw):
        raw["train"]["models"]["cnn"]["fit"]["augment_flip"] = True
        raw["train"]["models"]["cnn"]["model"]["test_time_flip"] = True

    params = load(tmp_path, {"dataset": "mnist"}, change=force_on)
    assert mirroring(params, "cnn") == (True, True)
    warnings = params.mirroring_warnings("cnn")
    assert [warning.split(" ")[0] for warning in warnings] == [
        "train.models.cnn.fit.augment_flip",
        "train.models.cnn.model.test_time_flip",
    ]
    assert all("'mnist'" in warning and "data.mirror_symmetric" in warning for warning in warnings)
    assert params.mirroring_warnings("mlp") == []
    # The same switches on Fashion-MNIST are what the defaults do: nothing to warn about.
    assert (
        load(tmp_path, {"dataset": "fashion_mnist"}, change=force_on).mirroring_warnings("cnn")
        == []
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("augment_flip", "yes", "train.models.mlp.fit.augment_flip: expected bool or 'auto'"),
        ("test_time_flip", 1, "train.models.mlp.model.test_time_flip: expected bool or 'auto'"),
    ],
)
def test_a_mirroring_switch_is_a_boolean_or_auto(tmp_path, key, value, message):
    def change(raw):
        section = "fit" if key == "augment_flip" else "model"
        raw["train"]["models"]["mlp"][section][key] = value

    with pytest.raises(config.ConfigError, match=message.replace(".", r"\.")):
        load(tmp_path, {"dataset": "mnist"}, change=change)


def test_data_mirror_symmetric_must_be_a_boolean(tmp_path):
    with pytest.raises(config.ConfigError, match=r"data\.mirror_symmetric: expected bool"):
        load(tmp_path, {"dataset": "mnist", "mirror_symmetric": "yes"})
