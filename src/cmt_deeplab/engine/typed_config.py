"""Typed dataclasses from YAML mappings: the checks and conversions of every config key.

``build_dataclass(TrainConfig, mapping)`` builds nested dataclasses from what YAML gave,
following their type hints: an unknown key is an error that lists the known ones, a value of
the wrong type is an error naming its dotted key. Float settings must be finite (no ``.nan`` / ``.inf``). YAML's quirks are handled here once
(``fix_yaml_number``): YAML 1.1 reads an exponent without a dot (``3e-4``, ``1e4``) as a
string, and a whole number written as ``1e4`` as a float.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

#: What each scalar type must be, as the error message says it.
_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def fix_yaml_number(value: Any) -> Any:
    """A string that YAML 1.1 left unparsed but that is a number (``"3e-4"``) -> a float;
    anything else as it is. Only strings with a digit count (``"inf"`` stays a string)."""
    if isinstance(value, str) and any(ch.isdigit() for ch in value):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls(**data)`` with every value converted to its field's type hint (recursively).

    Args:
        cls: a dataclass whose fields have type hints.
        data: the (sparse) mapping from YAML; missing keys keep their defaults.
        prefix: the dotted path of ``data`` in the whole config (``"optimizer."``), for errors.

    Raises:
        ValueError: a non-mapping, an unknown key, a value of the wrong type, or an error of
            the dataclass's own checks, naming the key.
    """
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix + unknown[0]!r}"
            + (f" (and {', '.join(repr(prefix + k) for k in unknown[1:])})" if unknown[1:] else "")
            + f"; known keys{' under ' + repr(where) if prefix else ''}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}" if prefix else str(error)) from None


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (dataclass, ``X | None``, list, dict, scalar or ``Any``)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value if value is not None else {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        last_error: Exception | None = None
        for option in options:
            try:
                return coerce(value, option, key)
            except ValueError as error:
                last_error = error
        assert last_error is not None
        raise last_error
    if hint is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, int) and not isinstance(value, bool) and item is int:
            return value  # a square size; InputSection turns it into [S, S]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint in _SCALARS:
        return _coerce_scalar(value, hint, key)
    raise AssertionError(f"unhandled config type {hint} at {key}")


def _coerce_scalar(value: Any, hint: type, key: str) -> Any:
    if hint is float:
        value = fix_yaml_number(value)
    elif hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 in YAML is a float
    is_bool = isinstance(value, bool)
    fits = {
        bool: is_bool,
        int: isinstance(value, int) and not is_bool,
        float: isinstance(value, (int, float)) and not is_bool,
        str: isinstance(value, str),
    }[hint]
    if not fits:
        raise ValueError(f"config key {key!r} must be {_SCALARS[hint]}, got {value!r}")
    if hint is float and not math.isfinite(value):
        # YAML's .nan / .inf: a NaN weight silently switches a loss off, an infinite one
        # surfaces steps later as a non-finite loss that names no setting.
        raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
    return float(value) if hint is float else value
