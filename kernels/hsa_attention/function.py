"""Autograd function and entry point of the Triton HSA attention.

``hsa_attention_triton(q, k, v, indices, weights, *, chunk_size, scale=None, sink=False, schedule="block",
atomic_dq=False, launch=None)`` has the semantics of :func:`hsa_core.ops.hsa_attention` (``naive.py``
is the reference); the forward is ``forward.py``, the backward ``backward.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backward import hsa_attention_bwd
from .forward import check_schedule, hsa_attention_fwd
from .launch import AttentionLaunch, contiguous_rows, settings_for


def _check(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int) -> None:
    B, T, HQ, D = q.shape
    H = k.shape[2]
    if not 16 <= D <= 256:
        raise ValueError(f"head dim {D} not supported by the Triton kernels (16 <= D <= 256)")
    if HQ % H or k.shape != v.shape or k.shape[1] % chunk_size or indices.shape != (B, T, H, indices.shape[-1]):
        raise ValueError(f"bad shapes for hsa_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"indices {tuple(indices.shape)}, chunk_size {chunk_size}")
    if weights.shape != indices.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must be shaped like indices {tuple(indices.shape)}")


class HSAAttentionFunction(torch.autograd.Function):
    """``o = sum_j w_j softmax(q K_{c_j}^T * scale) V_{c_j}``; gradients to q, k, v and weights."""

    @staticmethod
    def forward(ctx, q, k, v, indices, weights, chunk_size, scale, sink, schedule, atomic_dq, launch):
        need_lse = any(ctx.needs_input_grad)
        o, lse = hsa_attention_fwd(q, k, v, indices, weights, chunk_size, scale, sink, schedule=schedule,
                                   store_lse=need_lse, launch=launch)
        if need_lse:
            ctx.save_for_backward(q, k, v, indices, weights, lse)
        ctx.chunk_size, ctx.scale, ctx.atomic_dq, ctx.launch = chunk_size, scale, atomic_dq, launch
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, indices, weights, lse = ctx.saved_tensors
        dq, dk, dv, dw = hsa_attention_bwd(do, q, k, v, indices, weights, lse, ctx.chunk_size, ctx.scale,
                                           atomic_dq=ctx.atomic_dq, launch=ctx.launch)
        return dq, dk, dv, None, dw.to(weights.dtype), None, None, None, None, None, None


def hsa_attention_triton(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, *,
                         chunk_size: int, scale: float | None = None, sink: bool = False, schedule: str = "block",
                         atomic_dq: bool = False, launch: AttentionLaunch | None = None) -> Tensor:
    """Triton HSA attention; same contract as :func:`hsa_core.ops.hsa_attention`.

    Args:
        q: ``(B, T, HQ, D)``; k, v: ``(B, C*S, H, D)``; indices: ``(B, T, H, K)`` (-1 = empty slot,
            ids >= C are treated as empty too); weights: ``(B, T, H, K)``.
        schedule: the forward, ``"block"`` (blocks of consecutive tokens that chose few distinct chunks
            load each tile once, the other blocks go token by token) or ``"query"`` (one program per
            token); ``forward.py`` gives their measurements.
        atomic_dq: the backward adds dQ with fp32 atomics (less memory, dQ not bitwise deterministic;
            ``backward.py``).
        launch: launch settings (default: the table row of q's device, ``launch.py``).
    Returns:
        ``(B, T, HQ, D)`` in q's dtype.
    Raises:
        ValueError: unknown ``schedule``, a head dim outside 16..256, or inconsistent shapes.
    """
    check_schedule(schedule)
    _check(q, k, v, indices, weights, chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    launch = launch or settings_for(q.device)
    q, k, v = contiguous_rows(q), contiguous_rows(k), contiguous_rows(v)
    indices = indices.to(torch.int32).contiguous()
    weights = weights.contiguous()
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, weights))
    if q.shape[1] == 1 and not needs_grad and q.is_cuda:
        # Decoding (hsa_kernels.hsa_decode): one token x G heads, query-outer, no LSE store.
        return hsa_attention_fwd(q, k, v, indices, weights, chunk_size, scale, sink, schedule="query",
                                 store_lse=False, launch=launch)[0]
    return HSAAttentionFunction.apply(q, k, v, indices, weights, chunk_size, scale, sink, schedule, atomic_dq,
                                      launch)


__all__ = ["HSAAttentionFunction", "hsa_attention_triton"]
