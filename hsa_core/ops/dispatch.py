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

from ..envvars import env_choice
from ..errors import MissingDependencyError, UsageError

BACKENDS = ("auto", "torch", "triton")
#: The ops with a Triton implementation (what ``hsa info`` reports a backend for).
KERNEL_OPS: tuple[str, ...] = hsa_kernels.OPS


def requested_backend() -> str:
    """``HSA_BACKEND`` (default ``auto``).

    Raises:
        UsageError: any other value (exit code 2 in the CLI).
    """
    return env_choice("HSA_BACKEND", BACKENDS, "auto")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def backend_for(op: str, device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: what :func:`hsa_core.ops` would run for ``op`` on ``device``.

    Raises:
        RuntimeError: ``HSA_BACKEND=triton`` without Triton installed.
        ImportError: the kernel would run but its module fails to import.
    """
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    dev = torch.device(device)
    if not hsa_kernels.triton_available():
        if choice == "triton":
            raise MissingDependencyError(f"HSA_BACKEND=triton ('{op}')", "triton", "triton")
        return "torch"
    if choice == "triton":
        # Triton compiles for GPUs; on any other device only its interpreter runs the kernels.
        if dev.type != "cuda" and not _interpreting():
            raise UsageError(f"HSA_BACKEND=triton cannot run '{op}' on {dev.type}: Triton kernels need CUDA, or "
                             "TRITON_INTERPRET=1 (slow, for tests); use HSA_BACKEND=auto or torch")
    elif dev.type != "cuda":
        return "torch"
    hsa_kernels.triton_entry(op)  # imported now: a broken kernel module raises here
    return "triton"


def triton_impl(op: str) -> Callable[..., Any]:
    """The Triton entry point of ``op`` (see :func:`hsa_kernels.triton_entry`)."""
    return hsa_kernels.triton_entry(op)
