"""The harm mirroring does where the classes are mirror images of each other ("L" and "J"), and
that the `auto` default, resolved for such data, avoids it. Real training, tiny data."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import config, contracts, tracking
from pipeline.stages import prepare, train
from tests.support import chiral
from tests.support.workspace import TINY_VARIANTS, Workspace, write_params

VARIANT = {
    "model": {"architecture": "mlp", "dense": [32], "test_time_flip": "auto"},
    "fit": {
        "learning_rate": 0.01,
        "batch_size": 32,
        "epochs": 12,
        "seed": 3,
        "augment_flip": "auto",
    },
}


def resolved_variant(mirror_symmetric: bool | None) -> config.VariantConfig:
    """The variant with `auto` mirroring, as params.yaml would give it for the L/J data (a dataset
    we do not know) with `data.mirror_symmetric` set as given."""
    raw = {
        "data": {
            "dataset": "letters",
            "local_dir": "/data/letters",
            "class_names": list(chiral.CLASS_NAMES),
            "mirror_symmetric": mirror_symmetric,
        },
        "train": {"variants": ["mlp"], "models": {"mlp": VARIANT}},
    }
    return config.build(config.Params, raw, "").train.models["mlp"]


@pytest.fixture(scope="module")
def letters():
    (x_train, labels_train), (x_val, labels_val) = chiral.make(240, seed=1), chiral.make(80, seed=2)
    return x_train, prepare.one_hot(labels_train, 2), x_val, prepare.one_hot(labels_val, 2)


def fitted(variant: config.VariantConfig, letters) -> train.Trained:
    x_train, y_train, x_val, y_val = letters
    return train.train(
        variant_config=variant, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val
    )


def test_auto_leaves_mirroring_off_for_letters_and_the_model_tells_l_from_j(letters):
    variant = resolved_variant(None)
    assert (variant.fit.augment_flip, variant.model.test_time_flip) == (False, False)
    assert fitted(variant, letters).metrics.final_val_accuracy >= 0.95


def test_with_mirroring_l_and_j_cannot_be_told_apart(letters):
    """Declared mirror-safe (wrongly), `auto` turns both switches on: the model answers for an
    image and its mirror together, so an L and the J that mirrors it get the same answer."""
    variant = resolved_variant(True)
    assert (variant.fit.augment_flip, variant.model.test_time_flip) == (True, True)
    trained = fitted(variant, letters)
    x_val = letters[2]
    probabilities = np.asarray(trained.model(x_val))
    np.testing.assert_allclose(probabilities[0::2], probabilities[1::2], atol=1e-5)
    # Every pair is one L and one J with the same answer: at most one of the two is right.
    assert trained.metrics.final_val_accuracy <= 0.5 + 1e-6


def test_training_on_mirrored_letters_alone_already_confuses_them(letters):
    """Mirroring in training only (`fit.augment_flip`): each L is also shown as a J under the
    label L, so the model learns to answer L and J alike for both."""
    variant = resolved_variant(False)
    variant = config.VariantConfig(
        model=variant.model, fit=config.FitConfig(**{**VARIANT["fit"], "augment_flip": True})
    )
    assert fitted(variant, letters).metrics.final_val_accuracy <= 0.7


def test_the_train_stage_warns_and_tags_the_run_when_digits_are_mirrored(
    workspace: Workspace, prepared: Path, sqlite_store: str, caplog
):
    """The tiny `cnn` sets both switches on; on MNIST that is against the data's nature: the
    stage trains as asked, says so in its output and tags its MLflow run."""
    path = write_params(workspace.root / "params.yaml", variants=["cnn"])
    params = yaml.safe_load(path.read_text()) | {"data": {"dataset": "mnist"}}
    path.write_text(yaml.safe_dump(params))
    assert TINY_VARIANTS["cnn"]["fit"]["augment_flip"] is True
    out = workspace.root / "models" / "cnn"
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        train.main(
            [
                f"--params={path}",
                "--variant=cnn",
                f"--data={prepared}",
                f"--out={out}",
                f"--metrics={workspace.root / 'cnn.json'}",
                f"--plots={workspace.root / 'cnn.csv'}",
            ]
        )
    warned = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("train.models.cnn.fit.augment_flip is on" in line for line in warned), warned
    assert any("train.models.cnn.model.test_time_flip is on" in line for line in warned), warned
    run_id = contracts.TrainedRun.read(out / contracts.TrainedRun.file_name).run_id
    tag = (
        mlflow.MlflowClient(sqlite_store).get_run(run_id).data.tags[tracking.MIRRORING_WARNING_TAG]
    )
    assert "fit.augment_flip" in tag and "'mnist'" in tag
