"""Launch settings of the HSA attention kernels: a typed, per-architecture table (no global state).

:func:`settings_for` gives the :class:`AttentionLaunch` of a device; the entry point
``hsa_attention_triton(..., launch=...)`` takes another one (sweeps, tests). The values were chosen by
measurement on the H200 (sm_90; ``bench/results/h200/README.md``: forward 1 warp / 3 stages, fused
backward 64 rows x 4 warps / 2 stages, segments of 1024 pairs, token blocks of 64 rows). Other
architectures have not been measured and get the same values.

Also here: the small helpers both directions use (rows per program, dot precision, strides).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
import triton
from torch import Tensor

from ..arch import check_counts, row_for


@dataclass(frozen=True)
class AttentionLaunch:
    """Launch settings of the forward (query-outer and token-block) and the fused backward.

    Attributes:
        fwd_warps: warps of the query-outer forward; None = by tile size (1 warp up to 1024 elements
            of the largest tile, 2 up to 2048, else 4; 1 was best on the H200 at G=16, D=S=64).
        fwd_stages: software-pipelining stages of the query-outer forward.
        block_rows: rows (tokens x padded heads) of one token-block program: ``block_rows // BLOCK_G``
            tokens per block (4 at G=16).
        block_share_max: a block whose tokens chose at most this many distinct chunks is done by the
            token-block kernel; the others token by token.
        block_warps, block_stages: launch settings of the token-block kernel.
        bwd_rows: rows (pairs x padded heads) of one fused-backward program.
        bwd_warps: warps of the fused backward; None = by tile size (4 up to 4096 elements, else 8).
        bwd_stages: stages of the fused backward.
        bwd_seg: pairs per segment of the inverse index (a popular chunk is split into segments so that
            it does not serialise the backward).
    """

    fwd_warps: int | None = None
    fwd_stages: int = 3
    block_rows: int = 64
    block_share_max: int = 16
    block_warps: int = 4
    block_stages: int = 3
    bwd_rows: int = 64
    bwd_warps: int | None = None
    bwd_stages: int = 2
    bwd_seg: int = 1024

    def __post_init__(self) -> None:
        check_counts(self, optional=("fwd_warps", "bwd_warps"), minimum={"block_share_max": 0})


#: compute capability major*10 + minor -> settings measured there.
MEASURED: MappingProxyType[int, AttentionLaunch] = MappingProxyType({90: AttentionLaunch()})
#: What every other architecture (and the CPU interpreter) gets: the H200's values, unmeasured there.
FALLBACK = AttentionLaunch()


def settings_for(device: torch.device) -> AttentionLaunch:
    """The launch settings for ``device`` (its architecture's row of :data:`MEASURED`, else :data:`FALLBACK`)."""
    return row_for(device, MEASURED, FALLBACK)


def dot_tile(n: int) -> int:
    """A tile side of ``n`` (query heads, chunk rows, head dim) padded to a power of two >= 16, the
    smallest size ``tl.dot`` compiles for on GPUs (the interpreter takes smaller ones, so the CPU tests
    cannot catch this; the sm_90 compile check does)."""
    return max(16, triton.next_power_of_2(n))


def block_g(G: int) -> int:
    """Rows of one token's program: its G query heads, padded to a power of two >= 16 (tl.dot's minimum)."""
    return dot_tile(G)


def warps_for(warps: int | None, tile: int, *, forward: bool) -> int:
    """``warps`` when set, else by the elements of the program's largest accumulator tile."""
    if warps is not None:
        return warps
    if forward:
        return 1 if tile <= 1024 else 2 if tile <= 2048 else 4
    return 4 if tile <= 4096 else 8


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tests compare against fp64); 16-bit inputs the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def contiguous_rows(x: Tensor) -> Tensor:
    """``x`` with a contiguous last dimension (what the kernels' pointer arithmetic assumes)."""
    return x if x.stride(-1) == 1 else x.contiguous()


__all__ = ["FALLBACK", "MEASURED", "AttentionLaunch", "block_g", "contiguous_rows", "dot_precision",
           "settings_for", "warps_for"]
