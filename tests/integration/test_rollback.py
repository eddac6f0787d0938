"""`python -m pipeline.champion.rollback` against a real SQLite registry: the previous champion
comes back in one command, both versions say who did it and why, and the history reads back."""

from __future__ import annotations

import getpass

import pytest

from pipeline.champion import registry, rollback
from tests.support.registry import NAME, Registry


def crown_three(model_registry: Registry) -> None:
    """v1, v2, v3, each better than the one before, so each became champion in turn."""
    for index, accuracy in enumerate((0.80, 0.85, 0.90)):
        previous = None if index == 0 else accuracy - 0.05
        model_registry.register(
            model_registry.new_run(), accuracy=accuracy, champion_accuracy=previous
        )
    assert model_registry.alias("champion") == "3"


def test_rollback_restores_the_previous_champion_and_says_why(model_registry: Registry):
    crown_three(model_registry)
    client = model_registry.client
    assert rollback.rollback(client, NAME, reason="misreads sandals", by="ana") == ("3", "2")
    assert model_registry.alias("champion") == "2"
    left, restored = client.get_model_version(NAME, "3"), client.get_model_version(NAME, "2")
    assert left.tags[registry.ROLLED_BACK].endswith("by ana: misreads sandals")
    assert restored.tags[registry.CHAMPION_REASON] == "rollback from v3: misreads sandals"
    # Again: v1, never the rolled-back v3; then nothing is left to go back to.
    assert rollback.rollback(client, NAME, reason="v2 too", by="ana") == ("2", "1")
    with pytest.raises(rollback.RollbackError, match=r"nothing to go back to.*--to"):
        rollback.rollback(client, NAME, reason="again", by="ana")
    assert model_registry.alias("champion") == "1"
    # A version named with --to: for champions crowned before the history was recorded.
    assert rollback.rollback(client, NAME, reason="by hand", by="ana", to="2") == ("1", "2")
    assert model_registry.alias("champion") == "2"


def test_the_command_rolls_back_and_prints_the_history(
    model_registry: Registry, tmp_path, capsys: pytest.CaptureFixture
):
    crown_three(model_registry)
    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  registered_model: {NAME}\n")
    rollback.main([f"--params={params}", "--reason", "latency"])
    assert capsys.readouterr().out.strip() == f"{NAME}: champion v3 -> v2 (latency)"
    rollback.main([f"--params={params}", "--history"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1 if line.startswith("*") else 0] for line in lines] == [
        "v1",
        "v3",
        "v2",
    ]
    assert lines[-1].startswith("* v2") and "rollback from v3: latency" in lines[-1]
    assert "[rolled back" in lines[1] and "latency" in lines[1]


def test_the_registry_account_is_who_rolled_back() -> None:
    assert rollback.who({"MLFLOW_TRACKING_USERNAME": "trainer"}) == "trainer"
    assert rollback.who({}) == getpass.getuser()
