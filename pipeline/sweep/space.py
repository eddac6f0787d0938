"""A sweep's search space, without Ray: a trial's overrides -> its variant config, the checks
before any work, Ray Tune's search space, and the `dvc exp run -S ...` command that adopts one."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from typing import Any

from pipeline import config
from pipeline.config import ConfigError, VariantConfig
from pipeline.sweep.settings import Dimension


def trial_variant(
    variant: str, variant_config: VariantConfig, overrides: Mapping[str, Any]
) -> VariantConfig:
    """`variant_config` with `overrides` ({"fit.learning_rate": 0.003}) applied, re-checked as
    params.yaml would be (errors name `train.models.<variant>.<key>`)."""
    tree = dataclasses.asdict(variant_config)
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        tree[section][name] = list(value) if isinstance(value, tuple) else value
    return config.build(VariantConfig, tree, f"train.models.{variant}")


def check(variant: str, variant_config: VariantConfig, space: Mapping[str, Dimension]) -> None:
    """ConfigError naming `sweep.space.<key>` when a value a trial may get makes the variant
    invalid (a dropout of 1, a cnn option on an mlp)."""
    for key, dimension in space.items():
        for value in dimension.extremes():
            try:
                trial_variant(variant, variant_config, {key: value})
            except ConfigError as error:
                raise ConfigError(
                    f"sweep.space.{key}: the value {value!r} does not fit variant {variant!r}:"
                    f" {error}"
                ) from None


def tune_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Ray Tune's search space for `space` (imports Ray)."""
    from ray import tune

    makers = {
        "choice": lambda d: tune.choice(list(d.values)),
        "grid": lambda d: tune.grid_search(list(d.values)),
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "randint": lambda d: tune.randint(int(d.low), int(d.high)),
    }
    return {key: makers[dimension.kind](dimension) for key, dimension in space.items()}


def plain(value: Any) -> Any:
    """A value as YAML and MLflow want it: tuples as lists, numpy scalars as Python ones."""
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def override_text(value: Any) -> str:
    """`value` as the right-hand side of `dvc exp run -S key=value` (Hydra's override syntax)."""
    value = plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(override_text(item) for item in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def dvc_command(variant: str, overrides: Mapping[str, Any]) -> list[str]:
    """The command that makes `overrides` of `variant` an ordinary DVC experiment.

    `++key=value` (Hydra's force-add): a plain `key=value` fails when params.yaml does not
    spell the key out (the variant takes the field's default), `+key` when it does."""
    command = ["dvc", "exp", "run"]
    for key, value in sorted(overrides.items()):
        command += ["-S", f"++train.models.{variant}.{key}={override_text(value)}"]
    return command


def shell_text(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
