"""Typed dataclasses from untrusted JSON: every field checked against its annotation before use.

One builder serves the build manifest (runtime) and the model folder's config (toolchain), so a wrong
type anywhere fails the same way: one line naming the field, the value seen and the type wanted.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing


def from_dict(cls, data, where: str, error: type[Exception]):
    """Build dataclass `cls` from `data`, recursing into nested dataclasses, lists and dicts of them.
    Unknown and missing fields, wrong types and non-finite floats raise `error(message)`."""
    return _convert(cls, data, where, error)


def _fail(error, where: str, value, wanted: str):
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise error(f"{where} must be {wanted}, got {shown}")


def _convert(hint, value, where: str, error):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where, error)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where, error)
    if hint is typing.Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _fail(error, where, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(error, where, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(error, where, value, "a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(error, where, value, "a string")
        return value
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            _fail(error, where, value, "a list")
        if not args:
            return list(value)
        return [_convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            _fail(error, where, value, "an object")
        if not args:
            return dict(value)
        return {k: _convert(args[1], v, f"{where}.{k}", error) for k, v in value.items()}
    raise TypeError(f"schema: no rule for {hint!r} at {where}")  # a programming error, not bad input


def _dataclass(cls, data, where: str, error):
    if not isinstance(data, dict):
        _fail(error, where, data, "a JSON object")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"{where} has unknown fields {unknown}; known fields: {sorted(names)}")
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where} is missing required fields {missing}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}", error) for k, v in data.items()})
