"""Row gather from pinned host memory into the GPU (the offloaded chunk store's copy-in, no autograd):
naive twin (``naive``), Triton kernel and launcher (``gather``).

The Triton name loads on first use (PEP 562), so ``gather_rows_naive`` imports without Triton; with
Triton installed, an error in the kernel module propagates (no silent fallback).
"""

from __future__ import annotations

from typing import Any

from .naive import gather_rows_naive

__all__ = ["gather_rows_naive", "gather_rows_triton"]


def __getattr__(name: str) -> Any:
    if name == "gather_rows_triton":
        from .gather import gather_rows_triton

        return gather_rows_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
