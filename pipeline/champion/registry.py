"""The MLflow model registry as this project uses it: versions, their tags, the promotion gate.

`evaluate` registers the chosen variant and applies the gate; `serving.tools.package` looks up the
version an alias names. The alias names and the tags a version carries are defined here only.
Importing this does nothing (MLflow is imported by the functions that need it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from pipeline import contracts

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"
# The metric tags a version carries: the chosen variant's validation and test results.
METRIC_TAGS = tuple(item.name for item in fields(contracts.VariantMetrics))
# The tag of the temperature folded into a registered (calibrated) model.
TEMPERATURE = "temperature"
# The tags about a version's ONNX files start with this.
ONNX_PREFIX = "onnx_"
# The tag of a version the gate promoted: a contender for champion (`pipeline.champion.promotion`).
GATE, PASSED = "gate", "passed"
# The metric tag the gate compares versions by (one of METRIC_TAGS).
GATE_FIGURE = "test_accuracy"
# Tags a version gets each time it becomes champion (when, UTC ISO 8601, and why), and once it
# is rolled back (when, by whom, why): together, the alias's history (`champion_history`).
CHAMPION_SINCE, CHAMPION_REASON, ROLLED_BACK = "champion_since", "champion_reason", "rolled_back"
# Tries at setting an alias that other clients keep creating at the same moment (`set_alias`).
ALIAS_TRIES = 3


class NoSuchVersion(LookupError):
    """No version of the registered model carries the alias (or the model does not exist)."""


@dataclass(frozen=True)
class VersionTags:
    """The tags `evaluate` puts on a registered version and `serving.tools.package` reads back.

    Every field may be absent: a version registered by hand carries only what its author set.
    """

    variant: str | None = None
    dataset: str | None = None
    data_sha256: str | None = None
    git_commit: str | None = None
    run_id: str | None = None
    class_names: tuple[str, ...] | None = None
    input_contract: str | None = None
    # The box serving scales an upload's object to (see datasets.Dataset.content_size).
    content_size: int | None = None
    selected_by: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # The ONNX files' tags (`onnx_*`: served file, sha256s, check, int8 decision), as
    # `pipeline.model.int8.OnnxFiles.as_tags` writes them; empty for a version without ONNX.
    onnx: dict[str, str] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        """MLflow tags (strings only); absent fields are left out."""
        tags = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("metrics", "onnx") or value is None:
                continue
            tags[item.name] = json.dumps(list(value)) if item.name == "class_names" else str(value)
        metrics = {key: f"{value:.6f}" for key, value in self.metrics.items()}
        return tags | metrics | self.onnx

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionTags:
        """Read the tags of a version back; unknown tags are ignored, missing ones are None."""
        texts = {
            item.name: tags.get(item.name)
            for item in fields(cls)
            if item.name not in ("metrics", "onnx")
        }
        class_names = texts.pop("class_names")
        content_size = texts.pop("content_size")
        return cls(
            **texts,
            class_names=tuple(json.loads(class_names)) if class_names else None,
            content_size=int(content_size) if content_size else None,
            metrics={key: float(tags[key]) for key in METRIC_TAGS if key in tags},
            onnx={key: value for key, value in tags.items() if key.startswith(ONNX_PREFIX)},
        )


@dataclass(frozen=True)
class Registration:
    """The outcome of registering the chosen variant."""

    name: str
    # Versions are strings: a SQLite store gives ints, a tracking server strings.
    version: str
    promoted: bool
    reason: str
    champion_version: str


def version_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def alias_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"


def version_by_alias(client: Any, name: str, alias: str) -> Any:
    """The model version `alias` names; NoSuchVersion (with MLflow's reason) when none does."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise NoSuchVersion(error.message) from None


def champion(client: Any, name: str) -> Any | None:
    """The current champion version of `name`, or None."""
    try:
        return version_by_alias(client, name, CHAMPION)
    except NoSuchVersion:
        return None


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`, also when another client creates the alias at the same time.

    MLflow's database stores set an alias by a read, then an insert when the read found none
    (SQLAlchemy's merge). Two evaluations setting a new alias together both read none, and the
    later insert fails on the alias's primary key: PostgreSQL's UniqueViolation or SQLite's
    "UNIQUE constraint failed", which a tracking server answers as BAD_REQUEST. The row exists
    then, so setting it again reads it and updates it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(ALIAS_TRIES):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as error:
            if attempt + 1 == ALIAS_TRIES or not created_meanwhile(error):
                raise
            log.info(
                "alias %s of %s created meanwhile by another client: setting it again", alias, name
            )


def created_meanwhile(error: Exception) -> bool:
    """Whether `error` is a store's refusal of an alias row that another client just inserted."""
    message = str(error).lower()
    return "alias" in message and ("unique" in message or "duplicate key" in message)


def make_champion(client: Any, name: str, version: str, *, reason: str) -> None:
    """Point `champion` at `version`, recording on the version when and why."""
    when = datetime.now(UTC).isoformat(timespec="microseconds")
    client.set_model_version_tag(name, version, CHAMPION_SINCE, when)
    client.set_model_version_tag(name, version, CHAMPION_REASON, reason[:500])
    set_alias(client, name, CHAMPION, version)


def champion_history(client: Any, name: str) -> list[Any]:
    """Every version of `name` that has held `champion`, by when it last took it (latest last)."""
    held = [
        version
        for version in client.search_model_versions(f"name = '{name}'")
        if CHAMPION_SINCE in version.tags
    ]
    return sorted(held, key=lambda version: version.tags[CHAMPION_SINCE])


def challenger(client: Any, name: str) -> Any | None:
    """The current challenger version of `name`, or None."""
    try:
        return version_by_alias(client, name, CHALLENGER)
    except NoSuchVersion:
        return None


def version_for_run(
    client: Any, name: str, run_id: str, *, temperature: str | None = None
) -> Any | None:
    """The registered version whose source run is `run_id` and whose model carries the
    `temperature` tag given (None: any), if any, so re-runs add nothing. The registered model
    is the run's calibrated one: a new temperature is another model, so another version."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if temperature is not None:
        versions = [version for version in versions if version.tags.get(TEMPERATURE) == temperature]
    return min(versions, key=lambda version: int(version.version)) if versions else None


def add_version(
    client: Any, *, name: str, run_id: str, model_uri: str, tags: VersionTags, description: str
) -> str:
    """Register the model of `run_id` as a new version of `name`, or update the version that
    run already has with the same temperature (tags and description follow the latest
    evaluation); return the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="MNIST-style image classifier; see the version tags for details."
            )
        except MlflowException as error:
            # Another evaluation (another machine) created it in between: use theirs.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    new_tags = tags.as_tags()
    version = version_for_run(client, name, run_id, temperature=new_tags.get(TEMPERATURE))
    if version is not None:
        log.info("run %s is already %s version %s: reusing it", run_id, name, version.version)
        for key, value in new_tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.update_model_version(name, version.version, description=description)
        return str(version.version)
    # A tracking server rejects a `models:/<model_id>` source unless the model id comes along.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags=new_tags,
        description=description,
        model_id=model_id,
    )
    log.info("registered %s version %s from run %s", name, version.version, run_id)
    return str(version.version)


def gate(
    *,
    test_accuracy: float,
    champion_version: str | None,
    champion_test_accuracy: float | None,
    min_improvement: float,
) -> tuple[bool, str]:
    """The promotion gate: (promote?, why). A new version must beat the champion's test accuracy
    on the same test set by more than 0 and by at least `min_improvement`; with no champion, or
    one that cannot be scored on this test set, it is promoted."""
    if champion_version is None:
        return True, "first version: no champion yet"
    if champion_test_accuracy is None:
        return True, f"champion v{champion_version} cannot be scored on this test set"
    gain = test_accuracy - champion_test_accuracy
    promoted = gain > 0 and gain >= min_improvement
    comparison = (
        f"test accuracy {test_accuracy:.4f} vs champion v{champion_version}"
        f" {champion_test_accuracy:.4f} (gain {gain:+.4f}, needed > 0 and >= {min_improvement})"
    )
    return promoted, ("beats the champion: " if promoted else "not promoted: ") + comparison


def promote(
    client: Any,
    *,
    name: str,
    version: str,
    test_accuracy: float,
    champion_test_accuracy: float | None,
    min_improvement: float,
    over_budget: Sequence[str] = (),
) -> Registration:
    """Apply the gate to `version`: it gets alias champion, or alias challenger and the reason.
    `over_budget`: what its served file exceeds of `evaluate.budget`; any of it keeps the
    version challenger whatever its accuracy (a first version is served all the same: there is
    nothing else to serve)."""
    current = champion(client, name)
    if current is not None and str(current.version) == version:
        return Registration(name, version, True, "already the champion", version)
    promoted, reason = gate(
        test_accuracy=test_accuracy,
        champion_version=None if current is None else str(current.version),
        champion_test_accuracy=champion_test_accuracy,
        min_improvement=min_improvement,
    )
    if over_budget and current is None:
        # Nothing else can serve: the first version is served, and says what it exceeds.
        reason += f"; over budget ({'; '.join(over_budget)})"
    elif over_budget:
        promoted, reason = False, f"not promoted: over budget ({'; '.join(over_budget)}); {reason}"
    if not promoted:
        set_alias(client, name, CHALLENGER, version)
        return Registration(name, version, False, reason, str(current.version))
    client.set_model_version_tag(name, version, GATE, PASSED)
    make_champion(client, name, version, reason=reason)
    waiting = challenger(client, name)
    if waiting is not None and str(waiting.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return Registration(name, version, True, reason, version)
