"""`pipeline.champion.registry` against a real SQLite MLflow store: versions, aliases, the
promotion gate."""

from __future__ import annotations

import time

import mlflow
import mlflow.keras
import numpy as np
import pytest

from pipeline.champion import promotion, registry
from tests.support.registry import NAME, Registry


def test_first_version_becomes_champion_with_tags_and_description(model_registry: Registry):
    run = model_registry.new_run()
    result = model_registry.register(run, accuracy=0.8, champion_accuracy=None)
    assert result == registry.Registration(NAME, "1", True, "first version: no champion yet", "1")
    assert model_registry.alias("champion") == "1" and model_registry.alias("challenger") is None
    version = model_registry.client.get_model_version(NAME, "1")
    assert version.run_id == run[0]
    assert version.source == run[1]
    # `gate: passed`: a contender when evaluations elsewhere promote at the same time.
    # Becoming champion is recorded on the version: when and why (the alias's history).
    since = version.tags.pop(registry.CHAMPION_SINCE)
    assert since.startswith(f"{time.gmtime().tm_year}-") and since.endswith("+00:00")
    assert version.tags.pop(registry.CHAMPION_REASON) == "first version: no champion yet"
    assert version.tags == {"variant": "tiny", "test_accuracy": "0.800000", "gate": "passed"}
    assert version.description == "tiny model, test accuracy 0.8"
    loaded = mlflow.keras.load_model(registry.alias_uri(NAME))
    assert loaded(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)


def test_better_version_takes_champion_and_the_old_one_keeps_no_alias(model_registry: Registry):
    model_registry.register(model_registry.new_run(), accuracy=0.80, champion_accuracy=None)
    result = model_registry.register(
        model_registry.new_run(), accuracy=0.90, champion_accuracy=0.80
    )
    assert (result.version, result.promoted, result.champion_version) == ("2", True, "2")
    assert result.reason.startswith("beats the champion: test accuracy 0.9000 vs champion v1")
    assert model_registry.alias("champion") == "2"
    assert model_registry.alias("challenger") is None
    assert model_registry.versions() == ["1", "2"]


def test_worse_version_becomes_challenger_and_the_champion_stays(model_registry: Registry):
    model_registry.register(model_registry.new_run(), accuracy=0.80, champion_accuracy=None)
    result = model_registry.register(
        model_registry.new_run(), accuracy=0.70, champion_accuracy=0.80
    )
    assert (result.version, result.promoted, result.champion_version) == ("2", False, "1")
    assert result.reason.startswith("not promoted: test accuracy 0.7000 vs champion v1 0.8000")
    assert model_registry.alias("champion") == "1"
    assert model_registry.alias("challenger") == "2"


@pytest.mark.parametrize(
    ("accuracy", "min_improvement", "promoted"),
    [
        (0.75, 0.0, False),  # a tie does not replace the champion
        (0.75 + 2**-10, 0.0, True),
        (0.875, 0.25, False),
        (1.0, 0.25, True),  # a gain of exactly min_improvement is enough
    ],
)
def test_min_improvement_gates_promotion(
    model_registry: Registry, accuracy, min_improvement, promoted
):
    model_registry.register(model_registry.new_run(), accuracy=0.75, champion_accuracy=None)
    result = model_registry.register(
        model_registry.new_run(),
        accuracy=accuracy,
        champion_accuracy=0.75,
        min_improvement=min_improvement,
    )
    assert result.promoted is promoted
    assert model_registry.alias("champion") == ("2" if promoted else "1")
    assert model_registry.alias("challenger") == (None if promoted else "2")


def test_registering_the_same_run_again_reuses_its_version(model_registry: Registry):
    champion_run, challenger_run = model_registry.new_run(), model_registry.new_run()
    model_registry.register(champion_run, accuracy=0.8, champion_accuracy=None)
    model_registry.register(challenger_run, accuracy=0.7, champion_accuracy=0.8)

    again = model_registry.register(champion_run, accuracy=0.8, champion_accuracy=0.8)
    assert again == registry.Registration(NAME, "1", True, "already the champion", "1")
    again = model_registry.register(
        challenger_run,
        accuracy=0.7,
        champion_accuracy=0.8,
        tags=registry.VersionTags(variant="renamed"),
    )
    assert (again.version, again.promoted) == ("2", False)
    assert model_registry.versions() == ["1", "2"]
    assert (model_registry.alias("champion"), model_registry.alias("challenger")) == ("1", "2")
    # Tags and description follow the latest evaluation.
    assert model_registry.client.get_model_version(NAME, "2").tags["variant"] == "renamed"


def test_challenger_that_wins_later_loses_its_challenger_alias(model_registry: Registry):
    model_registry.register(model_registry.new_run(), accuracy=0.8, champion_accuracy=None)
    run = model_registry.new_run()
    model_registry.register(run, accuracy=0.7, champion_accuracy=0.8)
    result = model_registry.register(run, accuracy=0.9, champion_accuracy=0.8)
    assert (result.version, result.promoted) == ("2", True)
    assert model_registry.alias("champion") == "2" and model_registry.alias("challenger") is None
    assert model_registry.versions() == ["1", "2"]


def test_champion_that_cannot_be_scored_does_not_block_a_new_version(model_registry: Registry):
    model_registry.register(model_registry.new_run(), accuracy=0.8, champion_accuracy=None)
    result = model_registry.register(model_registry.new_run(), accuracy=0.5, champion_accuracy=None)
    assert result.promoted and result.reason == "champion v1 cannot be scored on this test set"
    assert model_registry.alias("champion") == "2"


def test_champion_and_challenger_lookup(model_registry: Registry):
    client = model_registry.client
    # Neither a model that does not exist nor one without aliases has a champion.
    assert registry.champion(client, NAME) is None
    with pytest.raises(registry.NoSuchVersion):
        registry.version_by_alias(client, NAME, registry.CHAMPION)
    first, second = model_registry.new_run(), model_registry.new_run()
    model_registry.register(first, accuracy=0.8, champion_accuracy=None)
    assert registry.challenger(client, NAME) is None
    model_registry.register(second, accuracy=0.7, champion_accuracy=0.8)

    champion, challenger = registry.champion(client, NAME), registry.challenger(client, NAME)
    assert (str(champion.version), champion.run_id) == ("1", first[0])
    assert (str(challenger.version), challenger.run_id) == ("2", second[0])
    assert registry.version_for_run(client, NAME, second[0]).version == challenger.version
    assert registry.version_for_run(client, NAME, "no-such-run") is None


def test_a_run_recalibrated_at_another_temperature_is_a_new_version(model_registry: Registry):
    """The registered model has the temperature folded in: the same run re-evaluated at the same
    temperature reuses its version, at another temperature it is another model and version
    (updating the old version's tags would describe a model it does not serve)."""
    run = model_registry.new_run()

    def register_at(temperature: float) -> registry.Registration:
        metrics = {"test_accuracy": 0.8, "temperature": temperature}
        tags = registry.VersionTags(variant="tiny", metrics=metrics)
        return model_registry.register(run, accuracy=0.8, champion_accuracy=0.8, tags=tags)

    assert register_at(0.7).version == "1"
    assert register_at(0.7).version == "1"
    assert model_registry.versions() == ["1"]
    recalibrated = register_at(0.9)
    assert recalibrated.version == "2" and model_registry.versions() == ["1", "2"]
    client = model_registry.client
    assert client.get_model_version(NAME, "1").tags["temperature"] == "0.700000"
    assert client.get_model_version(NAME, "2").tags["temperature"] == "0.900000"
    found = registry.version_for_run(client, NAME, run[0], temperature="0.900000")
    assert str(found.version) == "2"


def test_a_version_over_budget_stays_challenger_whatever_its_accuracy(
    model_registry: Registry,
):
    over = ["latency 31 ms > 20 ms"]
    first = promotion.register(
        model_registry.client,
        name=model_registry.name,
        **_version(model_registry, 0.80),
        champion_test_accuracy=None,
        min_improvement=0.0,
        over_budget=over,
    )
    # The first version is served all the same (nothing else could be), saying what it exceeds.
    assert first.promoted and first.reason.endswith("over budget (latency 31 ms > 20 ms)")
    better = promotion.register(
        model_registry.client,
        name=model_registry.name,
        **_version(model_registry, 0.95),
        champion_test_accuracy=0.80,
        min_improvement=0.0,
        over_budget=over,
    )
    assert (better.promoted, better.champion_version) == (False, "1")
    assert better.reason.startswith("not promoted: over budget (latency 31 ms > 20 ms); beats")
    assert model_registry.alias("champion") == "1"
    assert model_registry.alias("challenger") == "2"


def _version(model_registry: Registry, accuracy: float) -> dict:
    run_id, model_uri = model_registry.new_run()
    return {
        "run_id": run_id,
        "model_uri": model_uri,
        "tags": registry.VersionTags(variant="tiny", metrics={"test_accuracy": accuracy}),
        "description": f"tiny model, test accuracy {accuracy}",
        "test_accuracy": accuracy,
    }
