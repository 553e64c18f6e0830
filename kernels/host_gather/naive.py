"""Naive twin of the row gather: ``gather_rows_naive(src, index) -> src[index]`` on ``index``'s device.

``src`` ``(R, ...)`` rows (host memory for the offloaded chunk store), ``index`` ``(N,)`` integer row
ids on the compute device; the result ``(N, ...)`` is on ``index``'s device, with ``src``'s dtype.
"""

from __future__ import annotations

from torch import Tensor


def gather_rows_naive(src: Tensor, index: Tensor) -> Tensor:
    """``src.index_select(0, index)`` moved to ``index.device`` (through a copy where they differ)."""
    return src.index_select(0, index.to(src.device).long()).to(index.device)


__all__ = ["gather_rows_naive"]
