"""Which implementation runs an op: the Triton kernels on CUDA, the PyTorch reference elsewhere.

``HSA_BACKEND`` forces a choice: ``torch`` (reference everywhere), ``triton`` (kernels everywhere;
on CPU that needs ``TRITON_INTERPRET=1``), ``auto`` (default).

The kernels come from :mod:`hsa_kernels` by normal imports. Without Triton installed, ``auto`` runs the
reference; with Triton installed, a kernel module that fails to import is an error wherever a kernel
would run (CUDA tensors, or ``HSA_BACKEND=triton``), never a silent fallback to the slow reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import hsa_kernels
import torch

BACKENDS = ("auto", "torch", "triton")
#: The ops with a Triton implementation (what ``hsa info`` reports a backend for).
KERNEL_OPS: tuple[str, ...] = hsa_kernels.OPS


def requested_backend() -> str:
    """``HSA_BACKEND`` (default ``auto``). Raises ValueError for any other value."""
    value = os.environ.get("HSA_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"environment variable HSA_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def backend_for(op: str, device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: what :func:`hsa_core.ops` would run for ``op`` on ``device``.

    Raises:
        RuntimeError: ``HSA_BACKEND=triton`` without Triton installed.
        ImportError: the kernel would run but its module fails to import.
    """
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    if not hsa_kernels.triton_available():
        if choice == "triton":
            raise RuntimeError(f"HSA_BACKEND=triton but Triton is not installed, so no kernel for '{op}' "
                               "(install it with: pip install 'hsa-toolkit[triton]')")
        return "torch"
    if choice == "auto" and torch.device(device).type != "cuda":
        return "torch"
    hsa_kernels.triton_entry(op)  # imported now: a broken kernel module raises here
    return "triton"


def triton_impl(op: str) -> Callable[..., Any]:
    """The Triton entry point of ``op`` (see :func:`hsa_kernels.triton_entry`)."""
    return hsa_kernels.triton_entry(op)
