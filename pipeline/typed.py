"""Plain YAML data into frozen dataclasses: `build(hint, value, path)` checks every key and type
against the dataclass tree (pipeline.config's `Params`) and names the dotted key in every error."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """params.yaml does not describe a valid configuration."""


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(value) for value in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build(hint: Any, value: Any, path: str) -> Any:
    """Convert plain YAML data into `hint` (a dataclass or simple type); errors name `path`."""
    if hint is Any:
        # A value whose type depends on another key (a sweep's choices): checked by its owner.
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        fields = {item.name: item for item in dataclasses.fields(hint)}
        unknown = sorted(set(value) - set(fields), key=str)
        if unknown:
            # The full dotted name (train.models.cnn.fit.epoch) is what one greps params.yaml for.
            dotted = [f"{path}.{key}".lstrip(".") for key in unknown]
            raise ConfigError(f"unknown key(s) {dotted}; allowed here: {sorted(fields)}")
        hints = typing.get_type_hints(hint)
        kwargs = {}
        for name, item in fields.items():
            if name in value:
                kwargs[name] = build(hints[name], value[name], f"{path}.{name}".lstrip("."))
            elif (
                item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            ):
                raise ConfigError(f"{path}: missing required key {name!r}")
        try:
            return hint(**kwargs)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}" if path else str(error)) from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1:
            return build(inner[0], value, path)
        # `bool | Literal["auto"]`: the first alternative that takes the value.
        for alternative in inner:
            try:
                return build(alternative, value, path)
            except ConfigError:
                continue
        expected = " or ".join(_type_name(arg) for arg in inner)
        raise ConfigError(f"{path}: expected {expected}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(build(args[0], item, f"{path}[{index}]") for index, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(key): build(args[1], item, f"{path}.{key}") for key, item in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
