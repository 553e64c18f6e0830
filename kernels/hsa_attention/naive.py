"""Naive twin of the Triton HSA attention: the exact PyTorch reference of ``hsa_core.ops``.

``hsa_attention_naive(q, k, v, indices, weights, *, chunk_size, scale=None, sink=False)``
q ``(B, T, HQ, D)``; k, v ``(B, C*S, H, D)``; indices/weights ``(B, T, H, K)`` -> ``(B, T, HQ, D)``.
Tests run it in fp64 to get the ground truth the kernels are measured against.
"""

from __future__ import annotations

from hsa_core.ops.reference import hsa_attention_torch

hsa_attention_naive = hsa_attention_torch

__all__ = ["hsa_attention_naive"]
