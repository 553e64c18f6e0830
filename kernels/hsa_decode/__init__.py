"""HSA decode path (T == 1, no autograd): naive twin (``naive``), Triton launch (``decode``).

The Triton names load on first use (PEP 562), so ``hsa_decode_naive`` imports without Triton; with
Triton installed, an error in the kernel modules propagates (no silent fallback).
"""

from __future__ import annotations

from typing import Any

from .naive import hsa_decode_naive

__all__ = ["hsa_decode_naive", "hsa_decode_triton"]


def __getattr__(name: str) -> Any:
    if name == "hsa_decode_triton":
        from .decode import hsa_decode_triton

        return hsa_decode_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
