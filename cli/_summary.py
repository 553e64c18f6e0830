"""Render a :class:`hsa_core.summary.ModelSummary` as a rich table plus totals (build, demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from ._common import console

if TYPE_CHECKING:
    from hsa_core.summary import ModelSummary


def print_summary(summary: ModelSummary, *, title: str) -> None:
    """The layer table (index, kind, plugin, memory wiring, params), totals, state/memory sizes."""
    from hsa_core.summary import format_count

    table = Table(title=title, title_justify="left")
    table.add_column("idx", justify="right")
    table.add_column("kind")
    table.add_column("plugin")
    table.add_column("memory wiring", overflow="fold")
    table.add_column("params", justify="right")
    for row in summary.rows:
        kind = row.kind + (" +mlp" if row.mlp else "")
        table.add_row("" if row.index is None else str(row.index), escape(kind), escape(row.plugin),
                      escape(row.wiring), format_count(row.params))
    out = console()
    out.print(table)
    kinds = ", ".join(f"{n} {k}" for k, n in summary.layer_kinds.items())
    out.print(f"layers: {summary.num_layers} ({kinds})")
    out.print(f"parameters: {format_count(summary.total)} total ({summary.total:,}) = "
              f"{format_count(summary.embedding)} embedding + {format_count(summary.backbone)} backbone + "
              f"{format_count(summary.hsa_extras)} HSA extras + {format_count(summary.other)} other")
    out.print(summary.sizes_line())
