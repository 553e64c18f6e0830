"""HSA Triton kernels, one op folder each (fla's habit): ``naive.py`` (the pure-PyTorch reference, no
Triton needed), the kernels with their launchers, the autograd function and entry point.

This package imports nothing from ``hsa_core``; ``hsa_core.ops`` imports it. :func:`triton_entry` is the
one place the dispatch gets a kernel from: a normal import, so a broken kernel module raises instead of
falling back to the reference.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

#: The ops with a Triton entry point (``hsa_decode`` is reached through ``hsa_attention`` at T == 1).
OPS = ("hsa_attention", "hsa_decode", "hsa_select", "host_gather")


def triton_available() -> bool:
    """Whether Triton is installed (the kernels' only extra dependency; found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_entry(op: str) -> Callable[..., Any]:
    """The Triton entry point of ``op`` (one of :data:`OPS`), imported now.

    Raises:
        ValueError: ``op`` is not one of :data:`OPS`.
        ImportError: Triton is missing, or a kernel module fails to import (a bug, reported as is).
    """
    if op == "hsa_attention":
        from .hsa_attention import hsa_attention_triton

        return hsa_attention_triton
    if op == "hsa_select":
        from .hsa_select import hsa_select_triton

        return hsa_select_triton
    if op == "host_gather":
        from .host_gather import gather_rows_triton

        return gather_rows_triton
    if op == "hsa_decode":
        from .hsa_decode import hsa_decode_triton

        return hsa_decode_triton
    raise ValueError(f"no Triton kernel for op {op!r}; known: {', '.join(OPS)}")


__all__ = ["OPS", "triton_available", "triton_entry"]
