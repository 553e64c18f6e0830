"""HSA attention: naive twin (``naive``), forward and backward kernels (``forward``, ``backward``), inverse
index (``index``), launch settings (``launch``), autograd function and entry point (``function``).

The Triton names load on first use (PEP 562), so ``hsa_attention_naive`` imports without Triton; with
Triton installed, an error in the kernel modules propagates (no silent fallback).
"""

from __future__ import annotations

from typing import Any

from .naive import hsa_attention_naive

__all__ = ["AttentionLaunch", "HSAAttentionFunction", "hsa_attention_naive", "hsa_attention_triton"]


def __getattr__(name: str) -> Any:
    if name in ("HSAAttentionFunction", "hsa_attention_triton"):
        from . import function

        return getattr(function, name)
    if name == "AttentionLaunch":
        from .launch import AttentionLaunch

        return AttentionLaunch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
