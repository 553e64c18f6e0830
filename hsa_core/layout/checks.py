"""Type and key checks for layouts, each raising :class:`~hsa_core.errors.SpecError` with the path."""

from __future__ import annotations

import contextlib
import copy
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SpecError, short_repr, truncate

REQUIRED: Any = object()  # marker in a defaults table: a key without default


def show(value: Any) -> str:
    """A value as echoed in an error message: bounded in length and in how deep it is walked (a YAML
    alias bomb or a 10 MB string is described in constant time)."""
    if value is None or isinstance(value, bool | float):
        return str(value)
    if isinstance(value, int):
        # (str() of an int over 4,300 digits raises; no one means a number that long)
        return short_repr(value, 60) if value.bit_length() < 200 else f"an integer of {value.bit_length():,} bits"
    if isinstance(value, str):
        return short_repr(value, 80)
    return f"{type(value).__name__} {short_repr(value, 80)}"


def as_int(path: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SpecError(path, f"expected {what}{' or null' if allow_none else ''}, got {show(value)}")
    return value


def as_float(path: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads `1e-5` (no dot) as a string; take it as the number everyone means.
        with contextlib.suppress(ValueError):
            value = float(value) if any(c.isdigit() for c in value) and value.strip().lower() not in (
                "nan", "inf", "-inf") else value
    if isinstance(value, bool) or not isinstance(value, int | float) or (positive and not value > 0):
        raise SpecError(path, f"expected a {'positive ' if positive else ''}number, got {show(value)}")
    return float(value)


def as_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"expected true or false, got {show(value)}")
    return value


def as_choice(path: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SpecError(path, f"expected one of {', '.join(choices)}, got {show(value)}")
    return value


def as_str(path: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise SpecError(path, f"expected a string, got {show(value)}")
    return value


def as_mapping(path: str, value: Any, *, allow_none: bool = True) -> dict[str, Any]:
    if value is None and allow_none:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected a mapping, got {show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"keys must be strings, got {show(key)}")
    return dict(value)


def check_keys(path: str, given: Mapping[str, Any], allowed: Sequence[str], what: str = "key") -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6) if len(str(key)) < 100 else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            key_text = truncate(str(key), 60)
            where = f"{path}.{key_text}" if path else key_text
            raise SpecError(where, f"unknown {what}{hint} (allowed: {', '.join(allowed) or 'none'})")


def fill_defaults(path: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    check_keys(path, given, list(defaults))
    out = {}
    for key, default in defaults.items():
        if key in given:
            out[key] = given[key]
        elif default is REQUIRED:
            raise SpecError(f"{path}.{key}", "missing (required)")
        else:
            out[key] = copy.deepcopy(default)
    return out


def check_option(path: str, value: Any, default: Any) -> Any:
    """Check a kind option against the type of its registered default (the only schema we have)."""
    if default is None:
        return value
    if isinstance(default, bool):
        return as_bool(path, value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"expected an integer, got {show(value)}")
        return value
    if isinstance(default, float):
        return as_float(path, value, positive=False)
    if isinstance(default, str):
        return as_str(path, value)
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple):
            raise SpecError(path, f"expected a list, got {show(value)}")
        return list(value)
    if isinstance(default, Mapping):
        return as_mapping(path, value, allow_none=False)
    return value


def known_names(mapping: Mapping[str, Any]) -> str:
    return ", ".join(mapping) or "none"
