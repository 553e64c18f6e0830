"""``hsa info``: versions of the stack and which backend each HSA op would run on."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from typing import Any

import typer
from rich.table import Table

from ._common import console, guarded

#: distribution name -> label. Versions come from package metadata, never from importing: importing
#: mamba_ssm on a CPU machine fails (no compiled extension) and fla imports take seconds.
DISTRIBUTIONS = {
    "hsa-toolkit": "hsa-toolkit",
    "torch": "torch",
    "triton": "triton",
    "flash-linear-attention": "fla",
    "fla-core": "fla-core",
    "mamba-ssm": "mamba-ssm",
    "causal-conv1d": "causal-conv1d",
    "transformers": "transformers",
    "einops": "einops",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything ``hsa info`` reports, as a JSON-ready dict."""
    import torch

    from hsa_core.errors import HSAError
    from hsa_core.ops import KERNEL_OPS, backend_for

    cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if cuda else [])
    backends: dict[str, dict[str, str]] = {}
    # Every op with a dispatch point (hsa_select, hsa_attention, hsa_decode, ... as kernels land).
    for op in sorted(KERNEL_OPS):
        backends[op] = {}
        for device in devices:
            try:
                backends[op][device] = backend_for(op, device)
            except (HSAError, ImportError, RuntimeError, ValueError) as exc:  # e.g. HSA_BACKEND=triton on CPU
                backends[op][device] = f"unavailable ({exc})"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {label: _version(dist) for dist, label in DISTRIBUTIONS.items()},
        "cuda": {
            "available": cuda,
            "torch_cuda": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        },
        "env": {k: os.environ.get(k) for k in ("HSA_BACKEND", "HSA_MAMBA_PATH", "HSA_SWA_PATH", "TRITON_INTERPRET",
                                               "CUDA_VISIBLE_DEVICES")},
        "backends": backends,
        "backbone_paths": _backbone_paths(cuda),
    }


def _backbone_paths(cuda: bool) -> dict[str, str]:
    """The path each built-in backbone takes on this machine's fastest device."""
    from hsa_backbones.fast_paths import describe_paths

    from hsa_core.errors import HSAError

    try:
        paths = describe_paths(cuda)
    except HSAError as exc:  # e.g. a bad HSA_MAMBA_PATH: shown, not fatal for an information command
        paths = {"mamba": f"error: {exc}", "mamba2": f"error: {exc}", "swa": f"error: {exc}"}
    fla = _version("flash-linear-attention")
    for kind in ("gla", "rwkv6", "rwkv7"):
        paths[kind] = (("fla Triton kernels" if cuda else "fla Triton kernels under TRITON_INTERPRET (slow)")
                       if fla else "unavailable (pip install 'hsa-toolkit[fla]')")
    paths["attention"] = "torch SDPA (flash / cuDNN / memory-efficient)" if cuda else "torch SDPA (CPU)"
    return paths


@guarded
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """Show versions (python, torch, triton, fla, mamba-ssm, CUDA) and the backend of each op."""
    data = collect()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title="Environment", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("python", f"{data['python']} ({data['platform']})")
    for label, version in data["versions"].items():
        table.add_row(label, version or "[dim]not installed[/dim]")
    cuda = data["cuda"]
    table.add_row("CUDA", f"{cuda['torch_cuda'] or 'none (CPU build of torch)'}; available: {cuda['available']}"
                  + (f" ({', '.join(cuda['devices'])})" if cuda["devices"] else ""))
    for key, value in data["env"].items():
        if value is not None:
            table.add_row(key, value)
    console().print(table)
    ops = Table(title="HSA op backends", title_justify="left")
    ops.add_column("op")
    for device in next(iter(data["backends"].values())):
        ops.add_column(device)
    for op, per_device in data["backends"].items():
        ops.add_row(op, *per_device.values())
    console().print(ops)
    console().print("(HSA_BACKEND=auto|torch|triton forces a backend; auto = Triton on CUDA, PyTorch elsewhere)")
    paths = Table(title=f"Backbone paths ({'CUDA' if cuda['available'] else 'CPU'})", title_justify="left")
    paths.add_column("backbone")
    paths.add_column("path")
    for kind, path in data["backbone_paths"].items():
        paths.add_row(kind, path)
    console().print(paths)
    console().print("(HSA_MAMBA_PATH=torch forces the PyTorch path of mamba/mamba2)")
