"""``hsa convert SRC OUT``: the authors' RAMba checkpoints <-> toolkit model directories.

* SRC is a checkpoint in the authors' layout (``.safetensors``, a torch state dict, or their
  checkpoint directory): OUT becomes a toolkit model directory. The layout comes from ``--layout``
  (a preset such as ``ramba-370m``, or a YAML), else from their ``config.json`` (``--config``, or
  the one inside a checkpoint directory).
* SRC is a toolkit model directory: OUT becomes ``model.safetensors`` in their naming plus their
  ``config.json``.

Either way the converted weights are checked: the toolkit model and a float64 re-derivation of
the published forward pass (:mod:`hsa_core.convert.reference`) run on a built-in input with the
same weights, and the largest logit difference is printed. Nothing is written when it fails.

Exit codes: 0 ok; 1 checkpoint or layout mismatch (one line naming the key); 2 usage; 4 the
logit check failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._common import (
    EXIT_CHECK_FAILED,
    EXIT_SPEC,
    PLUGIN_OPTION,
    SET_OPTION,
    console,
    fail,
    guarded,
    load_plugins,
    load_spec_from,
)

TOLERANCE = 1e-5  # relative to the largest reference logit (float64 on both sides: ~1e-12 in practice)


def _is_toolkit_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file()


def _layout(src: Path, layout: str | None, config: Path | None, set_: list[str] | None) -> tuple[str, dict]:
    from hsa_core.convert import ConvertError, layout_from_config
    from hsa_core.layout import load_spec

    if layout is not None and config is not None:
        raise typer.BadParameter("give --layout or --config, not both", param_hint="--layout")
    if layout is not None:
        path, spec = load_spec_from(layout, set_)
        return str(path), spec
    if config is None and src.is_dir() and (src / "config.json").is_file():
        config = src / "config.json"
    if config is None:
        raise typer.BadParameter("say which model the checkpoint holds: --layout PRESET|YAML (e.g. ramba-370m) "
                                 "or --config their config.json", param_hint="--layout")
    if not config.is_file():
        raise typer.BadParameter(f"'{config}' is not a file", param_hint="--config")
    try:
        raw = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{config}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{config}: expected a JSON object")
    layout_raw = layout_from_config(raw, name=config.parent.name or "ramba-published", source=str(config))
    return str(config), load_spec(layout_raw, overrides=list(set_ or []), source=str(config))


@guarded
def convert(
    src: Path = typer.Argument(..., help="The authors' checkpoint (file or directory), or a toolkit model directory."),
    out: Path = typer.Argument(..., help="Output directory."),
    layout: str | None = typer.Option(
        None, "--layout", "-l", help="Layout of the checkpoint: preset name (ramba-370m, ramba-370m-enc2) or YAML."),
    config: Path | None = typer.Option(None, "--config", help="The authors' config.json describing the checkpoint."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing OUT."),
    check_tokens: int | None = typer.Option(
        None, "--check-tokens", min=1, help="Length of the built-in check input (default (top-k + 2) x chunk size)."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the logit check (large models on small machines)."),
    set_: list[str] | None = SET_OPTION,
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Convert between the authors' RAMba checkpoints and toolkit model directories (checked in float64)."""
    from hsa_core.convert import ConvertError, check_conversion, export_published, load_published
    from hsa_core.model import HSALanguageModel

    load_plugins(plugin)
    if not src.exists():
        raise typer.BadParameter(f"'{src}' does not exist", param_hint="SRC")
    if out.exists() and not force:
        raise typer.BadParameter(f"'{out}' exists; use --force to replace it", param_hint="OUT")
    try:
        if _is_toolkit_dir(src):
            if layout is not None or config is not None:
                raise typer.BadParameter("a toolkit model directory carries its layout; drop --layout/--config",
                                         param_hint="--layout")
            model = HSALanguageModel.from_pretrained(src)
            direction = "toolkit -> published"
        else:
            source, spec = _layout(src, layout, config, set_)
            model = load_published(src, spec)
            direction = f"published -> toolkit (layout {source})"
        if not no_check:
            result = check_conversion(model, tokens=check_tokens)
            line = (f"max |logit difference| vs the float64 published forward: {result.max_abs:.3e} "
                    f"(relative {result.relative:.3e}, {result.tokens} tokens)")
            if result.relative > TOLERANCE:
                fail(f"check failed: {line}; tolerance {TOLERANCE:g}; nothing written", EXIT_CHECK_FAILED)
        if _is_toolkit_dir(src):
            export_published(model, out, overwrite=force)
        else:
            model.save_pretrained(out, overwrite=force)
    except ConvertError as exc:
        fail(str(exc), EXIT_SPEC)
    console().print(f"converted {direction}: wrote {out} ({model.num_parameters():,} parameters)")
    if not no_check:
        console().print(line)
