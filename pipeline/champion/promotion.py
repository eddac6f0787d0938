"""One champion across machines: after the gate, settle `champion` on the best promoted version.

Two evaluations that share a tracking server can both read the same old champion, both pass the
gate and both move the alias; the one that moves it last wins, better or not. MLflow has no
compare-and-set on aliases, and a lock would need the server's database, which clients of an
`mlflow server` do not reach (and SQLite or a file store has no such lock to share). So every
evaluation, after its own gate, converges instead: it reads the champion, then every version the
gate promoted (tag `gate=passed`) on the same test data (`data_sha256`), and points `champion` at
the one with the best gate figure (its test accuracy; ties: the older version), again until a read
finds the alias already there. The last evaluation to move the alias reads after its move, so it
sees every version registered before it; one registered later reads after it in turn. Either way
the alias ends on the best, whatever the order of finishing: the state a one-at-a-time run of
the same evaluations could have reached, the best of them winning.

A champion from other data is not comparable by these figures and is left alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from pipeline.champion import registry

log = logging.getLogger(__name__)
# Reads before giving up on a champion that other evaluations keep moving (each read is two
# requests; a few evaluations finishing together settle in one or two).
MAX_READS = 20
GATE_FIGURE = registry.GATE_FIGURE


def figure(version: Any) -> tuple[float, int]:
    """A version's rank: its gate figure, then the older version first."""
    return float(version.tags[GATE_FIGURE]), -int(version.version)


def contenders(client: Any, name: str, *, data_sha256: str) -> list[Any]:
    """The versions of `name` the gate promoted on the test data `data_sha256`."""
    return [
        version
        for version in client.search_model_versions(f"name = '{name}'")
        if version.tags.get(registry.GATE) == registry.PASSED
        and version.tags.get("data_sha256") == data_sha256
        and GATE_FIGURE in version.tags
    ]


def converge(client: Any, name: str, *, data_sha256: str) -> str | None:
    """Point `champion` at the best contender until a read finds it there; the champion's
    version then (None: there is none)."""
    for _ in range(MAX_READS):
        current = registry.champion(client, name)
        if current is None or current.tags.get("data_sha256") != data_sha256:
            return None if current is None else str(current.version)
        # Read after the champion: a version promoted after this read moves the alias itself.
        found = contenders(client, name, data_sha256=data_sha256)
        if GATE_FIGURE in current.tags:
            found.append(current)
        best = max(found, key=figure)
        if str(best.version) == str(current.version):
            return str(current.version)
        log.info(
            "champion v%s (%s %s) -> v%s (%s), promoted by another evaluation at the same time",
            current.version,
            GATE_FIGURE,
            current.tags.get(GATE_FIGURE),
            best.version,
            best.tags[GATE_FIGURE],
        )
        registry.make_champion(
            client,
            name,
            str(best.version),
            reason=f"the best version the gate promoted on the same test data ({GATE_FIGURE}"
            f" {best.tags[GATE_FIGURE]}), settled after evaluations at the same time",
        )
    log.warning(
        "champion of %s still moving after %d reads; left at v%s", name, MAX_READS, best.version
    )
    return str(best.version)


def settle(
    client: Any, registration: registry.Registration, *, data_sha256: str | None
) -> registry.Registration:
    """`registration` once the champion has converged: a promoted version that another,
    better one promoted at the same time displaced becomes the challenger."""
    if data_sha256 is None:  # Registered without its data's digest: nothing to compare by.
        return registration
    champion = converge(client, registration.name, data_sha256=data_sha256)
    if champion is None or champion == registration.champion_version:
        return registration
    if not registration.promoted or champion == registration.version:
        return dataclasses.replace(registration, champion_version=champion)
    registry.set_alias(client, registration.name, registry.CHALLENGER, registration.version)
    reason = (
        f"{registration.reason}; then v{champion}, promoted by another evaluation at the same"
        " time, was better: challenger"
    )
    return dataclasses.replace(
        registration, promoted=False, reason=reason, champion_version=champion
    )


def register(
    client: Any,
    *,
    name: str,
    run_id: str,
    model_uri: str,
    tags: registry.VersionTags,
    description: str,
    test_accuracy: float,
    champion_test_accuracy: float | None,
    min_improvement: float,
    over_budget: Sequence[str] = (),
) -> registry.Registration:
    """Register (or reuse) the version for `run_id`, apply the promotion gate (accuracy, and the
    served file's budget: `over_budget` says what it exceeds), then settle the champion among the
    versions that evaluations elsewhere promoted meanwhile.

    `champion_test_accuracy` is the current champion's accuracy on the same test set, or None
    when there is no champion yet or it cannot be scored on this test set.
    """
    version = registry.add_version(
        client, name=name, run_id=run_id, model_uri=model_uri, tags=tags, description=description
    )
    registration = registry.promote(
        client,
        name=name,
        version=version,
        test_accuracy=test_accuracy,
        champion_test_accuracy=champion_test_accuracy,
        min_improvement=min_improvement,
        over_budget=over_budget,
    )
    return settle(client, registration, data_sha256=tags.data_sha256)
