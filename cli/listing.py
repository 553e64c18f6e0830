"""``hsa list``: every registered backbone, retrieval-layer and task kind, its plugin and availability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ._common import PLUGIN_OPTION, console, guarded, load_plugins


def _rows(registry: Any) -> list[dict[str, Any]]:
    """One dict per kind: name, plugin, description, requires, extra, available, options."""
    from hsa_core.plugins import install_hint, is_available

    rows = []
    for name, entry in registry.items():
        info = entry.info
        requires = tuple(getattr(info, "requires", ()) or ())
        rows.append({
            "name": name,
            "plugin": entry.plugin,
            "description": getattr(info, "description", ""),
            "requires": list(requires),
            "extra": getattr(info, "extra", None),
            "install": install_hint(entry.plugin, getattr(info, "extra", None), requires),
            # find_spec only: importing mamba_ssm/fla here would cost seconds and could fail noisily.
            "available": is_available(requires),
            "options": dict(getattr(info, "defaults", {}) or {}),
        })
    return rows


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("kind", "plugin", "needs", "extra", "available", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        needs = ", ".join(row["requires"]) or "-"
        if row["available"]:
            status = "[green]yes[/green]"
        else:
            status = f"[red]no[/red]: {escape(row['install'])}"
        table.add_row(escape(row["name"]), escape(row["plugin"]), escape(needs), escape(row["extra"] or "-"), status,
                      escape(row["description"]))
    return table


@guarded
def list_kinds(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """List backbone kinds, retrieval layers and tasks, the plugin that provided each, and availability."""
    from hsa_app.tasks import registry as task_registry

    from hsa_core import plugins

    load_plugins(plugin)
    backbones = _rows(plugins.backbones())
    layers = _rows(plugins.retrieval_layers())
    tasks = _rows(task_registry())
    if as_json:
        typer.echo(json.dumps({"backbones": backbones, "retrieval_layers": layers, "tasks": tasks},
                              indent=2, default=str))
        return
    console().print(_table("Backbones", backbones))
    console().print(_table("Retrieval layers", layers))
    console().print(_table("Tasks (hsa train --task / hsa eval)", tasks))
    plugin_names = sorted({r["plugin"] for r in backbones + layers + tasks})
    console().print(f"plugins: {', '.join(plugin_names)}")
