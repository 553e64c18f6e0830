"""Limits checked *before* anything is expanded or allocated.

A layout is data from a user: ``layers: "M*99999999"`` or ``model.d_model: 10000000`` must be refused
with one line, not discovered by the kernel's OOM killer. Two checks live here:

* :data:`MAX_LAYERS`: the layer pattern parser counts layers before expanding a repeat;
* :func:`check_fits`: a model built on ``meta`` (free) is measured against the memory available on
  the device it is about to be built on.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ResourceLimitError

__all__ = ["MAX_LAYERS", "available_memory", "check_fits", "model_bytes"]

#: Most layers a layout may expand to (RAMba-370M has 28; the largest published hybrids ~100).
MAX_LAYERS = 4096

#: Share of the available memory a model's weights may take (activations and the optimizer need the rest).
FIT_FRACTION = 0.9


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model`` (shared tensors counted once; works on meta)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _cpu_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else ``None``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes on ``device`` (``None`` when unknown or not a real device)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return _cpu_available()
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def check_fits(model: nn.Module, device: torch.device | str, *, what: str = "the model") -> None:
    """Refuse to materialise ``model`` (built on meta) on ``device`` when its weights do not fit.

    Raises:
        ResourceLimitError: the weights need more than :data:`FIT_FRACTION` of the free memory.
    """
    need = model_bytes(model)
    free = available_memory(device)
    if free is None or need <= FIT_FRACTION * free:
        return
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    from .units import format_count

    raise ResourceLimitError(
        f"{what} is too large for {torch.device(device)}: its {format_count(n_params)} parameters need "
        f"{_gib(need)}, and {_gib(free)} are available (build on --device meta to inspect it)")
