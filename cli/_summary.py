"""Render :func:`hsa_core.summary.describe` output: the layer table and the totals (build, demo)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

from ._common import console


def as_plain(value: Any) -> Any:
    """Dataclasses / named tuples / mappings -> plain dicts and lists (for tables and JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "_asdict"):
        return {k: as_plain(v) for k, v in value._asdict().items()}
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def human(n: Any) -> str:
    """``389012345 -> '389.0M'``; non-numbers unchanged."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "" if n is None else str(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return str(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _cell(key: str, value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(k, v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(key, v) for v in value)
    if "bytes" in key:
        return human_bytes(value)
    if isinstance(value, int) and not isinstance(value, bool) and key not in ("index", "layer"):
        return human(value)
    return "" if value is None else str(value)


def print_summary(summary: Any, *, title: str) -> None:
    """Print the per-layer table and the totals of a summary (rows + totals)."""
    data = as_plain(summary)
    rows: list[dict[str, Any]] = data.get("rows", []) if isinstance(data, dict) else list(data)
    table = Table(title=title, title_justify="left")
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    for column in columns:
        numeric = any(isinstance(r.get(column), (int, float)) and not isinstance(r.get(column), bool) for r in rows)
        table.add_column(column.replace("_", " "), justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(_cell(c, row.get(c))) for c in columns))
    console().print(table)
    totals = data.get("totals", {}) if isinstance(data, dict) else {}
    for key, value in totals.items():
        exact = f" ({value:,})" if isinstance(value, int) and not isinstance(value, bool) and value >= 1000 \
            and "bytes" not in key else ""
        console().print(f"{key.replace('_', ' ')}: {_cell(key, value)}{exact}")
