"""Stage `evaluate`: choosing by validation, the registry's promotion gate, and the whole stage.

The stage itself runs the way DVC would run it: train and evaluate with the command lines that
dvc.yaml declares, then every declared output must exist.
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest
import yaml

from pipeline import evaluate, io, models, train
from pipeline.config import ModelConfig
from tests.conftest import DATASET, Workspace, write_params
from tests.support import synthetic

DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
NAME = "tiny-classifier"


def val(accuracy: float, loss: float, **test: float) -> dict[str, float]:
    return {"val_accuracy": accuracy, "val_loss": loss} | test


@pytest.mark.parametrize(
    ("candidates", "select_by", "expected"),
    [
        pytest.param({"a": val(0.90, 0.30), "b": val(0.95, 0.50)}, "val_accuracy", "b", id="acc"),
        pytest.param({"a": val(0.90, 0.30), "b": val(0.95, 0.50)}, "val_loss", "a", id="loss"),
        # Equal accuracy: the lower loss wins, although the name would pick "a".
        pytest.param({"a": val(0.9, 0.3), "b": val(0.9, 0.2)}, "val_accuracy", "b", id="acc-tie"),
        pytest.param({"a": val(0.8, 0.2), "b": val(0.9, 0.2)}, "val_loss", "b", id="loss-tie"),
        pytest.param({"b": val(0.9, 0.2), "a": val(0.9, 0.2)}, "val_accuracy", "a", id="name"),
        pytest.param({"b": val(0.9, 0.2), "a": val(0.9, 0.2)}, "val_loss", "a", id="name-loss"),
        # 0.1 + 0.2 != 0.3 in floating point; rounding makes it a tie that the loss decides.
        pytest.param(
            {"a": val(0.1 + 0.2, 0.5), "b": val(0.3, 0.4)}, "val_accuracy", "b", id="float-noise"
        ),
    ],
)
def test_select_best_by_validation_metrics(candidates, select_by, expected):
    assert evaluate.select_best(candidates, select_by=select_by) == expected


@pytest.mark.parametrize("select_by", ["val_accuracy", "val_loss"])
def test_select_best_ignores_test_metrics(select_by):
    candidates = {
        "better_val": val(0.90, 0.30, test_accuracy=0.50, test_loss=2.0),
        "better_test": val(0.85, 0.40, test_accuracy=0.99, test_loss=0.01),
    }
    assert evaluate.select_best(candidates, select_by=select_by) == "better_val"


def test_select_best_without_candidates_is_an_error():
    with pytest.raises(ValueError, match="no trained variants"):
        evaluate.select_best({}, select_by="val_accuracy")


def test_score_is_accuracy_and_plain_cross_entropy():
    probabilities = np.array([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    scores = evaluate.score(probabilities, np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(scores.predictions, [0, 1, 2, 0])
    assert scores.accuracy == 0.75
    # The third image gives its true class probability 0, clipped to 1e-7.
    expected = -(np.log(0.5) + np.log(0.8) + np.log(1e-7) + np.log(1.0)) / 4
    assert scores.loss == pytest.approx(expected)


@dataclass
class Registry:
    """A client on a fresh SQLite store, with runs that hold a logged (untrained) tiny model."""

    client: mlflow.MlflowClient
    model: keras.Model
    experiment_id: str

    def new_run(self) -> tuple[str, str]:
        with mlflow.start_run(experiment_id=self.experiment_id) as run:
            info = mlflow.keras.log_model(self.model, name="model", pip_requirements=["keras"])
        return run.info.run_id, info.model_uri

    def register(
        self,
        run: tuple[str, str],
        *,
        accuracy: float,
        champion_accuracy: float | None,
        min_improvement: float = 0.0,
        tags: dict[str, str] | None = None,
    ) -> evaluate.Registration:
        run_id, model_uri = run
        return evaluate.register(
            self.client,
            name=NAME,
            run_id=run_id,
            model_uri=model_uri,
            tags=tags or {"variant": "tiny", "test_accuracy": f"{accuracy:.6f}"},
            description=f"tiny model, test accuracy {accuracy}",
            test_accuracy=accuracy,
            champion_test_accuracy=champion_accuracy,
            min_improvement=min_improvement,
        )

    def alias(self, alias: str) -> str | None:
        """The version that `alias` points at, or None."""
        try:
            return str(self.client.get_model_version_by_alias(NAME, alias).version)
        except mlflow.exceptions.MlflowException:
            return None

    def versions(self) -> list[str]:
        found = self.client.search_model_versions(f"name = '{NAME}'")
        return sorted(str(version.version) for version in found)


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    return models.build_mlp(ModelConfig(architecture="mlp"), num_classes=10)


@pytest.fixture
def registry(sqlite_store: str, tiny_model: keras.Model) -> Registry:
    from pipeline import tracking

    client = mlflow.MlflowClient(sqlite_store)
    return Registry(client, tiny_model, tracking.get_or_create_experiment(client, "registry"))


def test_first_version_becomes_champion_with_tags_and_description(registry: Registry):
    run = registry.new_run()
    result = registry.register(run, accuracy=0.8, champion_accuracy=None)
    assert result == evaluate.Registration(NAME, "1", True, "first version: no champion yet", "1")
    assert registry.alias("champion") == "1" and registry.alias("challenger") is None
    version = registry.client.get_model_version(NAME, "1")
    assert version.run_id == run[0]
    assert version.source == run[1]
    assert version.tags == {"variant": "tiny", "test_accuracy": "0.800000"}
    assert version.description == "tiny model, test accuracy 0.8"
    loaded = mlflow.keras.load_model(f"models:/{NAME}@champion")
    assert loaded(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)


def test_better_version_takes_champion_and_the_old_one_keeps_no_alias(registry: Registry):
    registry.register(registry.new_run(), accuracy=0.80, champion_accuracy=None)
    result = registry.register(registry.new_run(), accuracy=0.90, champion_accuracy=0.80)
    assert (result.version, result.promoted, result.champion_version) == ("2", True, "2")
    assert result.reason.startswith("beats the champion: test accuracy 0.9000 vs champion v1")
    assert registry.alias("champion") == "2"
    assert registry.alias("challenger") is None
    assert registry.versions() == ["1", "2"]


def test_worse_version_becomes_challenger_and_the_champion_stays(registry: Registry):
    registry.register(registry.new_run(), accuracy=0.80, champion_accuracy=None)
    result = registry.register(registry.new_run(), accuracy=0.70, champion_accuracy=0.80)
    assert (result.version, result.promoted, result.champion_version) == ("2", False, "1")
    assert result.reason.startswith("not promoted: test accuracy 0.7000 vs champion v1 0.8000")
    assert registry.alias("champion") == "1"
    assert registry.alias("challenger") == "2"


@pytest.mark.parametrize(
    ("accuracy", "min_improvement", "promoted"),
    [
        (0.75, 0.0, False),  # a tie does not replace the champion
        (0.75 + 2**-10, 0.0, True),
        (0.875, 0.25, False),
        (1.0, 0.25, True),  # a gain of exactly min_improvement is enough
    ],
)
def test_min_improvement_gates_promotion(registry: Registry, accuracy, min_improvement, promoted):
    registry.register(registry.new_run(), accuracy=0.75, champion_accuracy=None)
    result = registry.register(
        registry.new_run(),
        accuracy=accuracy,
        champion_accuracy=0.75,
        min_improvement=min_improvement,
    )
    assert result.promoted is promoted
    assert registry.alias("champion") == ("2" if promoted else "1")
    assert registry.alias("challenger") == (None if promoted else "2")


def test_registering_the_same_run_again_reuses_its_version(registry: Registry):
    champion_run, challenger_run = registry.new_run(), registry.new_run()
    registry.register(champion_run, accuracy=0.8, champion_accuracy=None)
    registry.register(challenger_run, accuracy=0.7, champion_accuracy=0.8)

    again = registry.register(champion_run, accuracy=0.8, champion_accuracy=0.8)
    assert again == evaluate.Registration(NAME, "1", True, "already the champion", "1")
    again = registry.register(
        challenger_run, accuracy=0.7, champion_accuracy=0.8, tags={"variant": "renamed"}
    )
    assert (again.version, again.promoted) == ("2", False)
    assert registry.versions() == ["1", "2"]
    assert (registry.alias("champion"), registry.alias("challenger")) == ("1", "2")
    # Tags and description follow the latest evaluation.
    assert registry.client.get_model_version(NAME, "2").tags["variant"] == "renamed"


def test_challenger_that_wins_later_loses_its_challenger_alias(registry: Registry):
    registry.register(registry.new_run(), accuracy=0.8, champion_accuracy=None)
    run = registry.new_run()
    registry.register(run, accuracy=0.7, champion_accuracy=0.8)
    result = registry.register(run, accuracy=0.9, champion_accuracy=0.8)
    assert (result.version, result.promoted) == ("2", True)
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    assert registry.versions() == ["1", "2"]


def test_champion_that_cannot_be_scored_does_not_block_a_new_version(registry: Registry):
    registry.register(registry.new_run(), accuracy=0.8, champion_accuracy=None)
    result = registry.register(registry.new_run(), accuracy=0.5, champion_accuracy=None)
    assert result.promoted and result.reason == "champion v1 cannot be scored on this test set"
    assert registry.alias("champion") == "2"


def test_champion_accuracy_is_measured_on_the_given_test_set(registry: Registry):
    images, labels = synthetic.make_split(20, seed=5)
    x_test = images.astype(np.float32) / 255
    assert evaluate.champion_accuracy_on(registry.client, NAME, x_test, labels) is None
    registry.register(registry.new_run(), accuracy=0.8, champion_accuracy=None)
    expected = evaluate.score(np.asarray(registry.model(x_test)), labels).accuracy
    accuracy = evaluate.champion_accuracy_on(registry.client, NAME, x_test, labels)
    assert accuracy == pytest.approx(expected)
    # Labels the champion has no output for: it is not comparable, so no accuracy.
    assert evaluate.champion_accuracy_on(registry.client, NAME, x_test, labels + 10) is None


def declared_paths(stage: dict) -> list[str]:
    """Every path a dvc.yaml stage declares in outs, metrics and plots."""
    paths = []
    for section in ("outs", "metrics", "plots"):
        for entry in stage.get(section, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def stage_argv(command: str, module: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", module]
    return words[3:]


def test_evaluate_stage_registers_the_best_variant_and_writes_its_reports(
    workspace: Workspace, prepared: Path, tracking_store: str
):
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    root = workspace.root
    (root / "data").mkdir()
    (root / "data" / "prepared").symlink_to(prepared)
    name = f"tiny-{uuid.uuid4().hex[:8]}"  # the server's registry is shared by the session
    write_params(root / "params.yaml", evaluate={"registered_model": name})
    variants = ("mlp", "cnn")
    for variant in variants:
        command = stages["train"]["do"]["cmd"].replace("${item}", variant)
        train.main(stage_argv(command, "pipeline.train"))
        for path in declared_paths(stages["train"]["do"]):
            assert (root / path.replace("${item}", variant)).exists(), path

    evaluate_argv = stage_argv(stages["evaluate"]["cmd"], "pipeline.evaluate")
    evaluate.main(evaluate_argv)
    for path in declared_paths(stages["evaluate"]):
        assert (root / path).exists(), path

    client = mlflow.MlflowClient(tracking_store)
    meta = json.loads((prepared / "meta.json").read_text())
    runs = {v: json.loads((root / "models" / v / "run.json").read_text()) for v in variants}
    results = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert set(results["variants"]) == set(variants)
    for variant, metrics in results["variants"].items():
        assert set(metrics) == {
            "val_accuracy",
            "val_loss",
            "test_accuracy",
            "test_loss",
            "test_macro_f1",
        }
        assert 0.5 <= metrics["test_accuracy"] <= 1.0
        # model.keras is the model train validated: the same validation results.
        trained = json.loads((root / "metrics" / "train" / f"{variant}.json").read_text())
        assert metrics["val_accuracy"] == pytest.approx(trained["final_val_accuracy"])
        assert metrics["val_loss"] == pytest.approx(trained["final_val_loss"], rel=1e-3)
        # Test results and the evaluation report go to the variant's training run.
        run = client.get_run(runs[variant]["run_id"])
        for key in ("test_accuracy", "test_loss", "test_macro_f1"):
            assert run.data.metrics[key] == pytest.approx(metrics[key])
        assert {f"test_f1_{label}" for label in synthetic.CLASS_NAMES} <= set(run.data.metrics)
        # Only test results are added: the training history stays one value per epoch.
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
        reports = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert reports == {
            f"evaluation/{file_name}"
            for file_name in (
                "classification_report.json",
                "classification_report.txt",
                "confusion_matrix.png",
                "misclassified.png",
            )
        }

    chosen = evaluate.select_best(results["variants"], select_by="val_accuracy")
    assert (
        results["chosen"]
        == {"variant": chosen, "version": 1, "promoted": True} | results["variants"][chosen]
    )

    champion_json = json.loads((root / "models" / "champion.json").read_text())
    assert champion_json["registered_model"] == name
    assert champion_json["version"] == 1
    assert champion_json["model_uri"] == f"models:/{name}/1"
    assert champion_json["alias_uri"] == f"models:/{name}@champion"
    assert champion_json["variant"] == chosen
    assert champion_json["run_id"] == runs[chosen]["run_id"]
    assert champion_json["class_names"] == list(synthetic.CLASS_NAMES)
    assert champion_json["metrics"] == pytest.approx(results["variants"][chosen], abs=1e-6)
    assert champion_json["candidate"] == {
        "variant": chosen,
        "version": 1,
        "promoted": True,
        "reason": "first version: no champion yet",
    }

    # The DVC plots are the chosen variant's.
    records = json.loads((root / "plots" / "evaluate" / "confusion.json").read_text())
    assert len(records) == meta["counts"]["test"]
    assert {record["actual"] for record in records} == set(synthetic.CLASS_NAMES)
    correct = sum(record["actual"] == record["predicted"] for record in records)
    assert correct / len(records) == pytest.approx(results["variants"][chosen]["test_accuracy"])
    for file_name in ("confusion_matrix.png", "misclassified.png"):
        assert (root / "plots" / "evaluate" / file_name).read_bytes()[:8] == PNG

    version = client.get_model_version_by_alias(name, "champion")
    assert str(version.version) == "1" and version.run_id == runs[chosen]["run_id"]
    assert version.source == runs[chosen]["model_uri"]
    tags = version.tags
    assert tags["variant"] == chosen
    assert tags["dataset"] == DATASET
    assert tags["data_sha256"] == io.digest(meta["sha256"])
    assert tags["git_commit"] == workspace.commit
    assert tags["run_id"] == runs[chosen]["run_id"]
    assert json.loads(tags["class_names"]) == list(synthetic.CLASS_NAMES)
    assert tags["input_contract"] == evaluate.INPUT_CONTRACT
    assert tags["selected_by"] == "val_accuracy"
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        assert float(tags[key]) == pytest.approx(results["variants"][chosen][key], abs=1e-6)
    assert f"Variant `{chosen}`" in version.description

    with np.load(prepared / "test.npz") as data:
        x_test = data["x"]
    served = mlflow.keras.load_model(champion_json["alias_uri"])
    local = keras.saving.load_model(root / "models" / chosen / "model.keras")
    np.testing.assert_allclose(np.asarray(served(x_test)), np.asarray(local(x_test)), atol=1e-6)

    # Evaluating the same models again registers nothing new.
    evaluate.main(evaluate_argv)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    again = json.loads((root / "models" / "champion.json").read_text())
    assert again["version"] == 1
    assert again["candidate"]["reason"] == "already the champion"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_champion_this_stage_already_scored_is_not_scored_again(registry: Registry):
    images, labels = synthetic.make_split(20, seed=5)
    x_test = images.astype(np.float32) / 255
    run = registry.new_run()
    registry.register(run, accuracy=0.8, champion_accuracy=None)
    run_id = run[0]
    # The figure this stage measured for the champion's own run is used as it is.
    scored = {run_id: 0.125, "some-other-run": 0.5}
    assert evaluate.champion_accuracy_on(registry.client, NAME, x_test, labels, scored=scored) == (
        0.125
    )
    # A champion from a run this stage did not score is loaded and measured.
    expected = evaluate.score(np.asarray(registry.model(x_test)), labels).accuracy
    other = {"some-other-run": 0.5}
    assert evaluate.champion_accuracy_on(
        registry.client, NAME, x_test, labels, scored=other
    ) == pytest.approx(expected)
