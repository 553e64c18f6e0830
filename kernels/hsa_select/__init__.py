"""Fused HSA selection: naive twin (``naive``), Triton kernel, launch settings, autograd function and entry
point (``selection``).

The Triton names load on first use (PEP 562), so ``hsa_select_naive`` imports without Triton; with
Triton installed, an error in the kernel module propagates (no silent fallback).
"""

from __future__ import annotations

from typing import Any

from .naive import fusion_weights, hsa_select_naive, visible_chunks

__all__ = ["HSASelectFunction", "SelectLaunch", "fusion_weights", "hsa_select_naive", "hsa_select_triton",
           "hsa_select_windows_triton", "visible_chunks"]


def __getattr__(name: str) -> Any:
    if name in ("HSASelectFunction", "SelectLaunch", "hsa_select_triton", "hsa_select_windows_triton"):
        from . import selection

        return getattr(selection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
