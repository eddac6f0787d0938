"""A real MLflow registry to test against: runs holding a logged tiny model, alias lookups, and
versions registered by hand the way a follower of the registry finds them (`register_versions`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.champion import promotion, registry
from tests.support import shapes

NAME = "tiny-classifier"


@dataclass
class Registry:
    """A client on a fresh store, with runs that hold a logged (untrained) tiny Keras model."""

    client: Any
    model: Any
    experiment_id: str
    name: str = NAME

    def new_run(self) -> tuple[str, str]:
        """(run id, model URI) of a new run that logged `model`."""
        import mlflow
        import mlflow.keras

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
        tags: registry.VersionTags | None = None,
    ) -> registry.Registration:
        """`pipeline.champion.promotion.register` of `run` as a version scoring `accuracy` on
        test."""
        run_id, model_uri = run
        return promotion.register(
            self.client,
            name=self.name,
            run_id=run_id,
            model_uri=model_uri,
            tags=tags or registry.VersionTags(variant="tiny", metrics={"test_accuracy": accuracy}),
            description=f"tiny model, test accuracy {accuracy}",
            test_accuracy=accuracy,
            champion_test_accuracy=champion_accuracy,
            min_improvement=min_improvement,
        )

    def alias(self, alias: str) -> str | None:
        """The version that `alias` points at, or None."""
        try:
            return str(registry.version_by_alias(self.client, self.name, alias).version)
        except registry.NoSuchVersion:
            return None

    def versions(self) -> list[str]:
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(str(version.version) for version in found)


@contextlib.contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`start_run`, `log_model`) on `uri` for the duration, in this process."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def export_served(model: Any, folder: Path) -> dict[str, str]:
    """Export `model` to `folder` as `evaluate` registers a float32 version (the ONNX file and
    its probe of shape drawings); the tags `evaluate` puts on the version about them."""
    from pipeline.model import onnx_export

    served = onnx_export.export(model, folder / onnx_export.FP32_FILE)
    images, _ = shapes.shape_dataset(onnx_export.PROBE_IMAGES, seed=5)
    probe = onnx_export.write_probe(served, images, int8=False)
    digest = onnx_export.sha256(served)
    return {
        "onnx_file": onnx_export.FP32_FILE,
        "onnx_sha256": digest,
        "onnx_fp32_sha256": digest,
        "onnx_probe_sha256": onnx_export.sha256(probe),
    }


def register_versions(
    uri: str,
    count: int,
    *,
    name: str,
    onnx: bool = False,
    artifact_location: str | None = None,
) -> None:
    """`count` versions of `name`, tiny Keras shape models of different weights, as a hand
    registration would log them. With `onnx`, each also carries its ONNX export and probe under
    the logged model's `onnx/` and the tags `evaluate` writes about them, so
    `serving.tools.package` copies the files instead of exporting one. `artifact_location`: the
    experiment's (a SQLite store's default is relative to the working directory)."""
    import keras
    import mlflow
    import mlflow.keras

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("follow", artifact_location=artifact_location)
    client.create_registered_model(name)
    with tracking_at(uri):
        for version in range(1, count + 1):
            keras.utils.set_random_seed(version)
            model = shapes.tiny_model(len(shapes.SHAPES))
            with mlflow.start_run(experiment_id=experiment) as run:
                info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
            tags = registry.VersionTags(variant="mlp", dataset="mnist", class_names=shapes.SHAPES)
            extra = {}
            if onnx:
                with tempfile.TemporaryDirectory() as scratch:
                    extra = export_served(model, Path(scratch))
                    client.log_model_artifacts(info.model_id, scratch, "onnx")
            client.create_model_version(
                name,
                info.model_uri,
                run_id=run.info.run_id,
                tags=tags.as_tags() | extra,
                model_id=info.model_id,
            )
