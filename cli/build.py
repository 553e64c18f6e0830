"""``hsa build SPEC``: validate, build, print the layer table and totals; optionally save the model."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import typer

from hsa_core.errors import DeviceUnavailableError

from ._common import (
    PLUGIN_OPTION,
    SET_OPTION,
    build_model,
    check_parent_writable,
    console,
    guarded,
    load_plugins,
    load_spec_from,
)
from ._summary import print_summary


class Device(str, enum.Enum):
    """Where to build: ``meta`` allocates nothing (fast, any size), ``cpu``/``cuda`` real weights."""

    meta = "meta"
    cpu = "cpu"
    cuda = "cuda"


DEFAULT_CONTEXT_LEN = 4096


def pick_device(device: Device | None, out: Path | None) -> str:
    """Default: ``meta`` (instant, no memory), or ``cpu`` when weights are to be written."""
    import torch

    if device is None:
        return "cpu" if out is not None else "meta"
    if device is Device.meta and out is not None:
        raise typer.BadParameter("--out needs real weights; use --device cpu or cuda", param_hint="--device")
    if device is Device.cuda and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda: CUDA is not available on this machine; use --device cpu or meta")
    return device.value


@guarded
def build(
    spec: str = typer.Argument(..., help="Layout YAML file or preset name (e.g. ramba-370m)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write a loadable model directory here."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing --out directory."),
    set_: list[str] | None = SET_OPTION,
    device: Device | None = typer.Option(
        None, "--device", "-d", help="meta (default; no memory), cpu or cuda. --out implies cpu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the canonical spec and the summary as JSON."),
    context_len: int = typer.Option(
        DEFAULT_CONTEXT_LEN, "--context-len", "-c", min=1, help="Context length for the state/memory estimate."
    ),
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Validate a layout, build the model, print its layers, parameters and memory at a context length."""
    from hsa_core.summary import describe

    load_plugins(plugin)
    target = pick_device(device, out)
    if out is not None and out.exists() and not force:
        # Checked before building: a 370M build should not be wasted on a refusal to write.
        raise typer.BadParameter(f"'{out}' exists; use --force to replace it", param_hint="--out")
    if out is not None:
        check_parent_writable(out)  # before building: the weights must have somewhere to go
    path, canonical = load_spec_from(spec, set_)
    model = build_model(canonical, device=target, source=path)
    summary = describe(model, context_len=context_len)
    if out is not None:
        model.save_pretrained(out, overwrite=force)
    if as_json:
        payload = {"spec": canonical, "summary": summary.to_dict(), "device": target, "source": str(path)}
        if out is not None:
            payload["out"] = str(out)
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    print_summary(summary, title=f"{canonical['name']} ({path}) on {target}, context {context_len:,}")
    if out is not None:
        console().print(f"wrote {out} (load with HSALanguageModel.from_pretrained('{out}'))")
