"""``hsa validate SPEC``: check a layout without building anything."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import PLUGIN_OPTION, SET_OPTION, build_model, console, guarded, load_plugins, load_spec_from


@guarded
def validate(
    spec: str = typer.Argument(..., help="Layout YAML file or preset name."),
    set_: list[str] | None = SET_OPTION,
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Validate a layout spec; print `ok: <name> (<n> layers)` or one error line (exit 1).

    Runs every check `hsa build` runs: the layout, then the model built on meta (no memory), so that
    a backbone's own constraints between its options are checked too.
    """
    load_plugins(plugin)
    path, canonical = load_spec_from(spec, set_)
    build_model(canonical, device="meta", source=path)
    console().print(f"ok: {canonical['name']} ({len(canonical['layers'])} layers)")
