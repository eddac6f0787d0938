"""A real MLflow registry to test against: runs holding a logged tiny model, and alias lookups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.champion import promotion, registry

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
