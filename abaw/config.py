"""Frozen dataclass configs that round-trip through JSON (saved inside every artifact)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from abaw.errors import AbawError

T = TypeVar("T")


RUNTIME = {"runtime": True}  # field metadata: where/how a run executes, not what it computes


def runtime_field(default: Any) -> Any:
    """A config field that is a runtime argument (device, threads ...): saved for the record,
    ignored when a saved run is compared with a new config."""
    return dataclasses.field(default=default, metadata=RUNTIME)


def runtime_names(cls: Any) -> frozenset[str]:
    """Names of the runtime fields of a config class or instance."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))


def recorded(cfg: Any) -> dict[str, Any]:
    """The settings that define what a config computes (every field but the runtime ones)."""
    skip = runtime_names(cfg)
    return {k: v for k, v in to_dict(cfg).items() if k not in skip}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Plain dict → dataclass, converting lists back to tuples and nested dataclasses.

    Unknown keys are an error (a config from a newer version should not be half-read).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise AbawError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def load_config(cls: type[T], path: Any) -> T:
    """A config from a JSON file (the class's own `from_dict` when it has one, e.g. for old
    layouts); a FormatError naming the file otherwise."""
    import json

    from abaw.errors import FormatError
    from abaw.io import read_text

    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise FormatError(path, f"not JSON ({e.msg})", e.lineno) from None
    if not isinstance(data, dict):
        raise FormatError(path, f"expected a JSON object of {cls.__name__} settings")
    convert = getattr(cls, "from_dict", None)
    try:
        return convert(data) if convert is not None else from_dict(cls, data)
    except (TypeError, ValueError, AbawError) as e:
        raise FormatError(path, str(e)) from None


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            if dataclasses.is_dataclass(a) and isinstance(value, dict):
                return from_dict(a, value)
        if len(non_none) == 1:
            return _convert(non_none[0], value)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args:
            return tuple(_convert(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is dict and isinstance(value, dict):
        kt, vt = args if args else (Any, Any)
        return {k: _convert(vt, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value
