"""`pipeline.champion.promotion` against a real SQLite registry: evaluations that read the same old
champion, in an order that would leave the worse one champion, still end on the best."""

from __future__ import annotations

from pipeline.champion import registry
from tests.support.registry import Registry


def tags(accuracy: float, data: str = "data-1") -> registry.VersionTags:
    return registry.VersionTags(
        variant="tiny", data_sha256=data, metrics={"test_accuracy": accuracy}
    )


def test_the_worse_of_two_evaluations_finishing_last_leaves_the_better_champion(
    model_registry: Registry,
):
    model_registry.register(
        model_registry.new_run(), accuracy=0.8, champion_accuracy=None, tags=tags(0.8)
    )
    better, worse = model_registry.new_run(), model_registry.new_run()
    # Both measured the old champion (0.8) before either moved the alias; the better finishes first.
    first = model_registry.register(better, accuracy=0.95, champion_accuracy=0.8, tags=tags(0.95))
    assert (first.version, first.promoted, first.champion_version) == ("2", True, "2")
    last = model_registry.register(worse, accuracy=0.9, champion_accuracy=0.8, tags=tags(0.9))
    # Its gate passed against the stale champion, then it found the better one promoted too.
    assert (last.version, last.promoted, last.champion_version) == ("3", False, "2")
    assert "v2, promoted by another evaluation at the same time, was better" in last.reason
    assert model_registry.alias("champion") == "2"
    assert model_registry.alias("challenger") == "3"
    assert (
        model_registry.client.get_model_version(model_registry.name, "3").tags["gate"] == "passed"
    )


def test_a_champion_from_other_data_is_left_alone(model_registry: Registry):
    model_registry.register(
        model_registry.new_run(), accuracy=0.99, champion_accuracy=None, tags=tags(0.99)
    )
    # Other data: not comparable by the figures, so its own gate (the champion run on its test
    # set, here 0.5) decides, and the better figure of the older version does not pull it back.
    other = model_registry.register(
        model_registry.new_run(), accuracy=0.7, champion_accuracy=0.5, tags=tags(0.7, "data-2")
    )
    assert (other.promoted, other.champion_version) == (True, "2")
    assert model_registry.alias("champion") == "2"


def test_an_alias_another_evaluation_creates_meanwhile_is_set_all_the_same(
    model_registry: Registry, sqlite_store: str
):
    """MLflow sets an alias by a read, then an insert if the read found none: another client's
    insert in between makes that insert fail on the alias's key (what two machines promoting
    their first versions together met on PostgreSQL). Here another client points `champion` at
    v1 from its own connection just before the store inserts it for v2: v2 must end champion."""
    import re
    import sqlite3

    from sqlalchemy import event

    for accuracy in (0.8, 0.9):
        model_registry.register(
            model_registry.new_run(), accuracy=accuracy, champion_accuracy=None, tags=tags(accuracy)
        )
    model_registry.client.delete_registered_model_alias(model_registry.name, "champion")
    engine = model_registry.client._get_registry_client().store.engine
    inserted = []

    def insert_first(connection, cursor, statement, parameters, context, executemany):
        found = re.match(r"INSERT INTO registered_model_aliases \(([^)]*)\)", statement)
        if found and not inserted:
            row = dict(zip(found[1].split(", "), parameters, strict=True)) | {"version": 1}
            with sqlite3.connect(sqlite_store.removeprefix("sqlite:///")) as other:
                other.execute(
                    f"INSERT INTO registered_model_aliases ({', '.join(row)})"
                    f" VALUES ({', '.join('?' * len(row))})",
                    tuple(row.values()),
                )
            inserted.append(row)

    event.listen(engine, "before_cursor_execute", insert_first)
    try:
        registry.make_champion(model_registry.client, model_registry.name, "2", reason="better")
    finally:
        event.remove(engine, "before_cursor_execute", insert_first)
    assert [row["alias"] for row in inserted] == ["champion"]  # the other client's came first
    assert model_registry.alias("champion") == "2"
