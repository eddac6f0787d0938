"""`serving.tools.package`: the registry's champion into the BentoML store, once, with its
provenance.

A real MLflow registry (SQLite under a temporary folder) holds two versions of a tiny Keras model,
registered with the tags `pipeline.stages.evaluate` sets; each test gets an empty BentoML store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.champion.registry import VersionTags
from pipeline.model import int8, onnx_export
from serving.tools import package
from tests.support import bento, shapes
from tests.support.shapes import SHAPES

NAME = "shapes-classifier"
METRICS = {
    "1": {"val_accuracy": 0.91, "val_loss": 0.3, "test_accuracy": 0.9, "test_loss": 0.31},
    "2": {"val_accuracy": 0.95, "val_loss": 0.2, "test_accuracy": 0.94, "test_loss": 0.22},
}
DATASETS = {"1": "mnist", "2": "fashion_mnist"}


@dataclass(frozen=True)
class Registry:
    """A tracking URI whose registry holds versions "1" and "2" of NAME, and their models."""

    uri: str
    client: Any
    models: dict[str, Any]
    run_ids: dict[str, str]

    def crown(self, version: str) -> None:
        self.client.set_registered_model_alias(NAME, package.ALIAS, version)


def evaluate_tags(*, dataset: str, run_id: str, metrics: dict[str, float]) -> dict[str, str]:
    """Tags as `pipeline.stages.evaluate` puts them on a registered version (content_size left
    out, as on versions registered before it existed: packaging derives it from the dataset)."""
    return VersionTags(
        variant="mlp",
        dataset=dataset,
        data_sha256="0" * 64,
        git_commit="1" * 40,
        run_id=run_id,
        class_names=SHAPES,
        input_contract="28x28 grayscale image as float32 in [0, 1], shape (N, 28, 28)",
        selected_by="val_accuracy",
        metrics=metrics,
    ).as_tags()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import keras
    import mlflow
    import mlflow.keras
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("package", artifact_location=(root / "art").as_uri())
    client.create_registered_model(NAME)
    models, run_ids = {}, {}
    # Logging goes through MLflow's process-wide tracking URI; it and the environment variable
    # MLflow mirrors it into are both put back afterwards (the variable last, as it was first).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with _use_tracking_uri(uri):
            for version in ("1", "2"):
                keras.utils.set_random_seed(int(version))
                model = shapes.tiny_model(len(SHAPES))
                with mlflow.start_run(experiment_id=experiment) as run:
                    info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
                tags = evaluate_tags(
                    dataset=DATASETS[version], run_id=run.info.run_id, metrics=METRICS[version]
                )
                registered = client.create_model_version(
                    NAME, source=info.model_uri, run_id=run.info.run_id, tags=tags
                )
                assert str(registered.version) == version
                models[version], run_ids[version] = model, run.info.run_id
    yield Registry(uri, client, models, run_ids)


@pytest.fixture
def champion_v1(registry: Registry) -> Registry:
    registry.crown("1")
    return registry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    with bento.bentoml_home(tmp_path / "bentoml") as home:
        yield home


def assert_same_model(stored: Any, model: Any) -> None:
    """The BentoML model serves an ONNX file that answers as the Keras `model`."""
    from serving.model import served_file

    path = Path(stored.path_of(served_file(stored.info.metadata)))
    assert onnx_export.sha256(path) == stored.info.metadata["onnx"]["sha256"]
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(
        onnx_export.onnx_probabilities(path, images),
        np.asarray(model(images)),
        atol=onnx_export.TOLERANCE,
    )


def test_package_imports_the_champion_with_its_provenance(
    champion_v1: Registry, store: Path
) -> None:
    import bentoml

    tag = package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
    assert tag == f"{NAME}:v1"
    stored = bentoml.models.get(tag)
    assert Path(stored.path).is_relative_to(store)
    assert_same_model(stored, champion_v1.models["1"])
    metadata = stored.info.metadata
    assert metadata["registered_model"] == NAME
    assert metadata["version"] == "1"
    assert metadata["run_id"] == champion_v1.run_ids["1"]
    assert metadata["class_names"] == list(SHAPES)
    assert metadata["variant"] == "mlp" and metadata["dataset"] == "mnist"
    assert metadata["content_size"] == 20
    assert metadata["metrics"] == METRICS["1"]
    assert all(isinstance(value, float) for value in metadata["metrics"].values())
    assert metadata["model_uri"] == f"models:/{NAME}/1"
    assert metadata["tracking_uri"] == champion_v1.uri
    assert metadata["git_commit"] == "1" * 40 and metadata["data_sha256"] == "0" * 64
    assert stored.info.labels == {"alias": "champion", "dataset": "mnist", "variant": "mlp"}
    # v1 was registered with its Keras model only: packaging exported it and says so.
    assert metadata["onnx"]["exported_by"] == "serving.tools.package"
    assert metadata["onnx"]["files"] == ["model.onnx"]


def test_package_again_reuses_the_stored_model(champion_v1: Registry, store: Path) -> None:
    import bentoml

    first = package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
    created = bentoml.models.get(first).info.creation_time
    second = package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
    assert second == first
    assert [str(model.tag) for model in bentoml.models.list()] == [first]
    assert bentoml.models.get(second).info.creation_time == created


def test_package_follows_the_champion_to_a_new_version(registry: Registry, store: Path) -> None:
    import bentoml

    registry.crown("1")
    assert package.package(registered_model=NAME, tracking_uri=registry.uri) == f"{NAME}:v1"
    registry.crown("2")
    tag = package.package(registered_model=NAME, tracking_uri=registry.uri)
    assert tag == f"{NAME}:v2"
    stored = bentoml.models.get(tag)
    assert_same_model(stored, registry.models["2"])
    assert stored.info.metadata["version"] == "2"
    assert stored.info.metadata["run_id"] == registry.run_ids["2"]
    assert stored.info.metadata["metrics"] == METRICS["2"]
    # Fashion-MNIST products fill the frame, so serving scales uploads to 28 pixels, not 20.
    assert stored.info.metadata["content_size"] == 28
    assert sorted(str(model.tag) for model in bentoml.models.list()) == [
        f"{NAME}:v1",
        f"{NAME}:v2",
    ]


@pytest.mark.parametrize("registered_model", [NAME, "no-such-model"])
def test_package_without_a_champion_says_to_run_make_repro(
    registry: Registry, store: Path, registered_model: str
) -> None:
    import bentoml
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        registry.client.delete_registered_model_alias(NAME, package.ALIAS)
    with pytest.raises(package.PackageError, match=r"has alias 'champion'.*make repro"):
        package.package(registered_model=registered_model, tracking_uri=registry.uri)
    assert bentoml.models.list() == []


def test_package_leaves_the_process_tracking_uri_alone(
    champion_v1: Registry, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # Another store is current, as when a caller has its own; packaging must not switch it over.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    with _use_tracking_uri(elsewhere):
        package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
        assert mlflow.get_tracking_uri() == elsewhere
        assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere


def test_package_replaces_a_stored_model_from_another_run(
    champion_v1: Registry, store: Path
) -> None:
    import bentoml

    # Another registry's v1 was packaged into this store earlier under the same tag.
    with bentoml.models.create(
        f"{NAME}:v1", metadata={"run_id": "someone-elses-run", "class_names": ["x"], "onnx": {}}
    ) as stranger:
        Path(stranger.path_of("model.onnx")).write_bytes(b"not this registry's model")
    tag = package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["run_id"] == champion_v1.run_ids["1"]
    assert_same_model(stored, champion_v1.models["1"])


def test_package_replaces_a_model_it_stored_before_the_service_ran_onnx(
    champion_v1: Registry, store: Path
) -> None:
    import bentoml

    run_id = champion_v1.run_ids["1"]
    with bentoml.models.create(f"{NAME}:v1", metadata={"run_id": run_id}) as old:
        champion_v1.models["1"].save(old.path_of("model.keras"))
    tag = package.package(registered_model=NAME, tracking_uri=champion_v1.uri)
    assert_same_model(bentoml.models.get(tag), champion_v1.models["1"])


def test_package_copies_the_onnx_files_evaluate_registered_and_checks_their_sha256(
    registry: Registry, store: Path, tmp_path: Path
) -> None:
    """A version as evaluate registers it: both files under the logged model's onnx/, the
    served one and every sha256 in its tags. A file whose sha256 is not its tag's is refused."""
    import bentoml

    model = registry.models["2"]
    folder = tmp_path / "onnx"
    onnx_export.export(model, folder / onnx_export.FP32_FILE)
    images = np.random.default_rng(1).random((40, 28, 28), dtype=np.float32)
    int8.quantize(folder / "model.onnx", folder / "model.int8.onnx", images)
    probe = onnx_export.write_probe(folder / "model.int8.onnx", images, int8=True)
    tags = {
        "onnx_file": onnx_export.INT8_FILE,
        "onnx_served": "int8",
        "onnx_fp32_sha256": onnx_export.sha256(folder / "model.onnx"),
        "onnx_int8_sha256": onnx_export.sha256(folder / "model.int8.onnx"),
        "onnx_probe_sha256": onnx_export.sha256(probe),
        "onnx_int8_decision": "int8 keeps the answers: ...",
        "onnx_served_test_accuracy": "0.930000",
    }
    source = registry.client.get_model_version(NAME, "2").source
    model_id = source.removeprefix("models:/")
    registry.client.log_model_artifacts(model_id, str(folder), "onnx")
    try:
        for key, value in tags.items():
            registry.client.set_model_version_tag(NAME, "2", key, value)
        registry.crown("2")
        tag = package.package(registered_model=NAME, tracking_uri=registry.uri)
        stored = bentoml.models.get(tag)
        onnx = stored.info.metadata["onnx"]
        assert onnx["files"] == ["model.int8.onnx", "model.onnx", "probe.npz"]
        assert onnx["probe"] == "probe.npz"
        assert (onnx["served_file"], onnx["precision"]) == ("model.int8.onnx", "int8")
        assert onnx["sha256"] == tags["onnx_int8_sha256"] and "exported_by" not in onnx
        assert onnx["served_test_accuracy"] == 0.93
        for name, key in zip(onnx["files"], ("int8", "fp32", "probe"), strict=True):
            assert onnx_export.sha256(Path(stored.path_of(name))) == tags[f"onnx_{key}_sha256"]
        bentoml.models.delete(tag)
        registry.client.set_model_version_tag(NAME, "2", "onnx_fp32_sha256", "0" * 64)
        with pytest.raises(package.PackageError, match=r"model\.onnx in the registry has sha256"):
            package.package(registered_model=NAME, tracking_uri=registry.uri)
        assert bentoml.models.list() == []
    finally:
        # The files stay: without these tags they are served as the float32 export of the same
        # model, which is what the other tests check.
        for key in tags:
            registry.client.delete_model_version_tag(NAME, "2", key)
