"""Section `sweep` of params.yaml: a hyperparameter search with Ray Tune (`pipeline.sweep`).

`pipeline.config.Params` keeps the section as plain data, which only the sweep reads (`of`), so
that no DVC stage depends on this module. The checks here need nothing but the section itself (a
key of `space` must name a field of a variant's `model` or `fit`, and every value must have that
field's type); `pipeline.sweep.space.check` then tries the extremes on the chosen variant, before
any work.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline import config
from pipeline.typed import ConfigError

SAMPLED = ("uniform", "loguniform", "randint")
LISTED = ("choice", "grid")


def _error(message: str) -> Exception:
    return ConfigError(message)


@dataclass(frozen=True)
class Dimension:
    """How one key varies: `choice` (random pick) or `grid` (every value, `trials` times each)
    from `values`; `uniform`, `loguniform` or `randint` (high excluded) between `low` and
    `high`."""

    kind: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    def problem(self) -> str | None:
        """What is wrong with this dimension, or None."""
        if self.kind in LISTED:
            if not self.values or self.low is not None or self.high is not None:
                return f"{self.kind} takes a non-empty `values` list and no low/high"
            return None
        if self.values or self.low is None or self.high is None:
            return f"{self.kind} takes `low` and `high` and no values"
        if not self.low < self.high:
            return f"low must be below high, got {self.low} and {self.high}"
        if self.kind == "loguniform" and self.low <= 0:
            return f"loguniform needs low > 0, got {self.low}"
        if self.kind == "randint" and not (self.low.is_integer() and self.high.is_integer()):
            return f"randint needs whole numbers, got {self.low} and {self.high}"
        return None

    def extremes(self) -> tuple[Any, ...]:
        """Values a trial may get that are most likely to be invalid: every listed value, or
        the ends of the range."""
        if self.kind in LISTED:
            return self.values
        if self.kind == "randint":
            return (int(self.low), int(self.high) - 1)
        return (self.low, math.nextafter(self.high, self.low))


@dataclass(frozen=True)
class EarlyStopping:
    """ASHA (asynchronous successive halving) on validation accuracy, per epoch: at each rung
    (grace_period, x reduction_factor, ...) only the top 1/reduction_factor of trials go on."""

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise _error(f"sweep.early_stopping.grace_period must be >= 1, got {self.grace_period}")
        if self.reduction_factor < 2:
            raise _error(
                f"sweep.early_stopping.reduction_factor must be >= 2, got {self.reduction_factor}"
            )


@dataclass(frozen=True)
class SweepConfig:
    """Section `sweep`: what varies, how many trials, early stopping, resources, the cluster."""

    # Keys of the variant (`fit.learning_rate`, `model.dropout`) and how each varies.
    space: dict[str, Dimension] = field(default_factory=dict)
    # Random draws from the space (with grid dimensions: draws per grid point).
    trials: int = 8
    seed: int = 0
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # At most this many trials at once; 0: as many as the cluster's resources allow.
    max_concurrent: int = 0
    # A running cluster's `host:port` (`ray start --head`); null: start a local one for the run.
    address: str | None = None
    # The address a local cluster binds to. Ray turns 127.0.0.1 into the machine's outward
    # address, so another loopback address keeps its traffic on this machine.
    local_node_ip: str = "127.0.0.2"
    # Where trials log: null = the pipeline's own store (tracking.tracking_uri()). On a cluster
    # of several machines it must be a server every node reaches (http://host:5000).
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise _error(f"sweep.trials must be at least 1, got {self.trials}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise _error(
                "sweep.cpus_per_trial must be > 0 and sweep.gpus_per_trial >= 0, got"
                f" {self.cpus_per_trial} and {self.gpus_per_trial}"
            )
        if self.max_concurrent < 0:
            raise _error(f"sweep.max_concurrent must be >= 0, got {self.max_concurrent}")
        for key, dimension in self.space.items():
            check_key(key, dimension)


def field_hint(key: str) -> Any:
    """The type of the variant field `key` names (`fit.learning_rate`); ConfigError if none."""
    section, _, name = key.partition(".")
    owners = {"fit": config.FitConfig, "model": config.ModelConfig}
    owner = owners.get(section)
    names = [item.name for item in dataclasses.fields(owner)] if owner else []
    if owner is None or name not in names:
        allowed = sorted(
            f"{part}.{item.name}"
            for part, kind in owners.items()
            for item in dataclasses.fields(kind)
        )
        raise _error(
            f"sweep.space.{key}: not a key of a variant; keys look like fit.learning_rate or"
            f" model.dropout, one of {allowed}"
        )
    return typing.get_type_hints(owner)[name]


def check_key(key: str, dimension: Dimension) -> None:
    """ConfigError naming `sweep.space.<key>` when the key or its values do not fit."""
    hint = field_hint(key)
    problem = dimension.problem()
    if problem:
        raise _error(f"sweep.space.{key}: {problem}")
    for index, value in enumerate(dimension.extremes()):
        where = (
            f"sweep.space.{key}.values[{index}]"
            if dimension.kind in LISTED
            else (f"sweep.space.{key}.{'low' if index == 0 else 'high'}")
        )
        if dimension.kind == "randint" or (
            dimension.kind in ("uniform", "loguniform") and hint is float
        ):
            value = int(value) if dimension.kind == "randint" else float(value)
        config.build(hint, value, where)


def of(params: config.Params, source: str = "params.yaml") -> SweepConfig:
    """The checked `sweep:` section of `params` (read from `source`); a ConfigError names the
    file and the dotted key."""
    try:
        return config.build(SweepConfig, params.sweep, "sweep")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load(path: str = "params.yaml") -> SweepConfig:
    """The checked `sweep:` section of the params file at `path`."""
    return of(config.load(path), str(path))
