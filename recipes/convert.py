"""Strict conversion of parsed YAML into the recipe's dataclasses, field by field (types only).

:func:`build` turns a mapping into a dataclass: every key must be a field (a close match is suggested), every
value is converted to the field's annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal``,
``Optional``/``Union``, ``list[...]`` and nested dataclasses) or refused with one :class:`RecipeError` naming
the field. A dataclass may carry ``NOTES`` (a hint added to a field's error) and ``REFUSED`` (keys refused
outright, with the message). The recipe's own sections live in :mod:`recipes.schema`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union

from .errors import RecipeError, describe


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp):
            parts.append("null")
        return " or ".join(parts)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, path)
            except RecipeError as err:
                errors.append((arg, err))
        for arg, err in errors:  # a list meets the list branch (its error names the entry), a string the names
            if (isinstance(value, list) and typing.get_origin(arg) is list and err.field != path) or (
                    isinstance(value, str) and typing.get_origin(arg) is Literal and len(errors) == 2):
                raise err
        raise RecipeError(path, f"expected {_type_name(tp)}, got {describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, str) and value in allowed:
            return value
        hint = ""
        if isinstance(value, str) and len(allowed) > 1:
            close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(path, f"expected one of {', '.join(repr(a) for a in allowed)}, "
                                f"got {describe(value)}{hint}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(path, f"expected {_type_name(tp)}, got {describe(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise RecipeError(path, f"expected {_type_name(tp)}, got {describe(value)}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise RecipeError(path, f"expected a finite number, got {describe(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported schema type {tp!r} at {path}")
    raise RecipeError(path, f"expected {_type_name(tp)}, got {describe(value)}")


def build(cls: type, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(path or "recipe", f"expected a mapping, got {describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        shown = key if isinstance(key, str) and re.fullmatch(r"[\w+-]+", key) else describe(key)
        where = f"{path}.{shown}" if path else shown
        if not isinstance(key, str):
            hint = (" (YAML reads unquoted on/off/yes/no/true/false as booleans; quote the key)"
                    if isinstance(key, bool) else "")
            raise RecipeError(where, f"keys must be strings, got {describe(key)}{hint}")
        if key in getattr(cls, "REFUSED", {}):
            raise RecipeError(where, cls.REFUSED[key])
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise RecipeError(where, f"unknown key{hint}")
        try:
            kwargs[key] = _convert(value, hints[key], where)
        except RecipeError as err:
            note = getattr(cls, "NOTES", {}).get(key)
            if note and note not in err.message and "did you mean" not in err.message:
                err.message += f" ({note})"
            raise
    return cls(**kwargs)
