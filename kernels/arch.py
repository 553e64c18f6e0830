"""Per-architecture launch tables, shared by the ops: pick a device's row, validate a row's fields.

Each op keeps its settings in a frozen dataclass (``hsa_attention.launch.AttentionLaunch``,
``hsa_select.selection.SelectLaunch``) and a read-only table ``MEASURED`` keyed by compute capability
(major * 10 + minor) of the settings measured there, plus a ``FALLBACK`` row for everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

Row = TypeVar("Row")


def row_for(device: torch.device, measured: Mapping[int, Row], fallback: Row) -> Row:
    """``measured``'s row for ``device``'s architecture, else ``fallback`` (always for non-CUDA devices)."""
    if device.type != "cuda":
        return fallback
    major, minor = torch.cuda.get_device_capability(device)
    return measured.get(major * 10 + minor, fallback)


def check_counts(row: Any, *, optional: tuple[str, ...] = (), minimum: Mapping[str, int] | None = None,
                 skip: tuple[str, ...] = ()) -> None:
    """Every field of the dataclass ``row`` (but ``skip``) is an int >= 1 (``minimum`` overrides the bound
    per field; fields in ``optional`` may also be None).

    Raises:
        ValueError: naming the class, the field, the bound and the value.
    """
    for field in dataclasses.fields(row):
        if field.name in skip:
            continue
        value = getattr(row, field.name)
        low = (minimum or {}).get(field.name, 1)
        if value is None and field.name in optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{type(row).__name__}.{field.name} must be an int >= {low}, got {value!r}")


__all__ = ["check_counts", "row_for"]
