"""Which implementation runs an op: the Triton kernels on CUDA, the PyTorch reference elsewhere.

``HSA_BACKEND`` forces a choice: ``torch`` (reference everywhere), ``triton`` (kernels everywhere;
on CPU that needs ``TRITON_INTERPRET=1``), ``auto`` (default).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from ..errors import MissingDependencyError, UsageError, truncate

BACKENDS = ("auto", "torch", "triton")

# op name -> "module:function" of its Triton entry point in hsa_kernels.
TRITON_ENTRY_POINTS: dict[str, str] = {
    "hsa_attention": "hsa_kernels.hsa_attention:hsa_attention_triton",
    "hsa_select": "hsa_kernels.hsa_select:hsa_select_triton",
    # T == 1 without autograd: hsa_attention_triton hands over to it (one token x G heads per KV head).
    "hsa_decode": "hsa_kernels.hsa_decode:hsa_decode_triton",
}


def requested_backend() -> str:
    """``HSA_BACKEND`` (default ``auto``).

    Raises:
        UsageError: any other value (exit code 2 in the CLI).
    """
    value = os.environ.get("HSA_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise UsageError(f"environment variable HSA_BACKEND={truncate(repr(value), 40)} is not one of "
                         f"{', '.join(BACKENDS)}")
    return value


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.cache
def _load_triton(op: str) -> Callable[..., Any] | None:
    target = TRITON_ENTRY_POINTS.get(op)
    if target is None:
        return None
    module_name, fn = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, fn, None)


def backend_for(op: str, device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: what :func:`hsa_core.ops` would run for ``op`` on ``device``."""
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    dev = torch.device(device)
    if choice == "triton":
        # Triton compiles for GPUs; on any other device only its interpreter runs the kernels.
        if dev.type != "cuda" and not _interpreting():
            raise UsageError(f"HSA_BACKEND=triton cannot run '{op}' on {dev.type}: Triton kernels need CUDA, or "
                             "TRITON_INTERPRET=1 (slow, for tests); use HSA_BACKEND=auto or torch")
        if _load_triton(op) is None:
            raise MissingDependencyError(f"HSA_BACKEND=triton ('{op}')", "triton", "triton")
        return "triton"
    return "triton" if dev.type == "cuda" and _load_triton(op) is not None else "torch"


def triton_impl(op: str) -> Callable[..., Any]:
    fn = _load_triton(op)
    assert fn is not None
    return fn
