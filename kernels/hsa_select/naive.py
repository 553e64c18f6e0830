"""Naive twin of the fused selection: the exact PyTorch reference of ``hsa_core.ops``.

``hsa_select_naive(q_r (B,T,Hr,dr), landmarks (B,C,Hr,dr), *, topk, chunk_size, q_offset=0,
weighting, scale=None, window=None, gumbel=False) -> (indices int32, weights fp32) (B,T,Hr,topk)``.
"""

from __future__ import annotations

from hsa_core.ops.reference import hsa_select_torch

hsa_select_naive = hsa_select_torch

__all__ = ["hsa_select_naive"]
