"""The registry's pure parts: the promotion gate's decision and the tags a version carries."""

from __future__ import annotations

import json

import pytest

from pipeline.champion import registry


@pytest.mark.parametrize(
    ("accuracy", "champion_accuracy", "min_improvement", "promoted"),
    [
        (0.75, 0.75, 0.0, False),  # a tie does not replace the champion
        (0.75 + 2**-10, 0.75, 0.0, True),
        (0.70, 0.75, 0.0, False),
        (0.875, 0.75, 0.25, False),
        (1.0, 0.75, 0.25, True),  # a gain of exactly min_improvement is enough
        # A negative min_improvement still needs a gain: the champion is never replaced by worse.
        (0.74, 0.75, -0.5, False),
    ],
)
def test_gate_needs_a_gain_of_at_least_min_improvement(
    accuracy, champion_accuracy, min_improvement, promoted
):
    decision, reason = registry.gate(
        test_accuracy=accuracy,
        champion_version="3",
        champion_test_accuracy=champion_accuracy,
        min_improvement=min_improvement,
    )
    assert decision is promoted
    assert reason.startswith("beats the champion: " if promoted else "not promoted: ")
    assert f"vs champion v3 {champion_accuracy:.4f}" in reason


def test_gate_promotes_the_first_version_and_over_an_unscorable_champion():
    first = registry.gate(
        test_accuracy=0.1, champion_version=None, champion_test_accuracy=None, min_improvement=0.5
    )
    assert first == (True, "first version: no champion yet")
    unscorable = registry.gate(
        test_accuracy=0.1, champion_version="2", champion_test_accuracy=None, min_improvement=0.5
    )
    assert unscorable == (True, "champion v2 cannot be scored on this test set")


def test_version_tags_round_trip_through_mlflow_strings():
    tags = registry.VersionTags(
        variant="cnn",
        dataset="fashion_mnist",
        data_sha256="0" * 64,
        git_commit="1" * 40,
        run_id="r1",
        class_names=("T-shirt/top", "Trouser"),
        input_contract="28x28",
        content_size=28,
        selected_by="val_accuracy",
        metrics={"val_accuracy": 0.9423, "test_accuracy": 0.9364},
    )
    strings = tags.as_tags()
    assert all(isinstance(value, str) for value in strings.values())
    assert json.loads(strings["class_names"]) == ["T-shirt/top", "Trouser"]
    assert strings["content_size"] == "28"
    assert strings["test_accuracy"] == "0.936400"
    assert registry.VersionTags.from_tags(strings) == tags


def test_version_tags_of_a_hand_registered_version_are_absent_not_errors():
    tags = registry.VersionTags.from_tags({"variant": "mlp", "owner": "someone", "val_loss": "0.5"})
    assert tags == registry.VersionTags(variant="mlp", metrics={"val_loss": 0.5})
    assert tags.as_tags() == {"variant": "mlp", "val_loss": "0.500000"}


def test_uris_name_a_version_or_an_alias():
    assert registry.version_uri("m", 3) == "models:/m/3"
    assert registry.alias_uri("m") == "models:/m@champion"
    assert registry.alias_uri("m", registry.CHALLENGER) == "models:/m@challenger"


@pytest.mark.parametrize(
    ("message", "meanwhile"),
    [
        # What a tracking server on PostgreSQL answered the second of two evaluations (CI).
        (
            "BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique"
            ' constraint "registered_model_alias_pk"',
            True,
        ),
        (
            "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.workspace,"
            " registered_model_aliases.name, registered_model_aliases.alias",
            True,
        ),
        ("RESOURCE_DOES_NOT_EXIST: Model Version (name=m, version=9) not found", False),
        ("INVALID_PARAMETER_VALUE: 'latest' alias name (case insensitive) is reserved.", False),
    ],
)
def test_an_alias_created_meanwhile_is_told_from_other_refusals(message, meanwhile):
    from mlflow.exceptions import MlflowException

    assert registry.created_meanwhile(MlflowException(message)) is meanwhile
