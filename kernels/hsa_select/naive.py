"""Naive fused selection: the exact pure-PyTorch reference (runs everywhere, differentiable).

``hsa_select_naive(q_r (B,T,Hr,dr), landmarks (B,C,Hr,dr), *, topk, chunk_size, q_offset=0,
weighting, scale=None, window=None, gumbel=False) -> (indices int32, weights fp32) (B,T,Hr,topk)``,
the contract of :func:`hsa_core.ops.hsa_select`; :func:`visible_chunks` is its causal rule and
:func:`fusion_weights` its weighting (the Triton kernel's backward reuses the latter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..hsa_attention.naive import query_block


def visible_chunks(positions: Tensor, num_chunks: int, chunk_size: int, window: int | None) -> Tensor:
    """Causal visibility ``(T, C)`` bool: chunk ``i`` is visible to absolute position ``p`` iff
    ``(i+1)*S <= p``; with a sliding window ``W`` also iff ``(i+1)*S <= p - W + S``."""
    ends = (torch.arange(num_chunks, device=positions.device) + 1) * chunk_size
    limit = positions if window is None else positions - max(window - chunk_size, 0)
    return ends[None, :] <= limit[:, None]


def fusion_weights(scores: Tensor, valid: Tensor, weighting: str) -> Tensor:
    """Weights of the kept slots, fp32 ``(..., k)``; slots are ordered most recent first.

    stick_breaking: ``log w_j = s_j - sum_{l<=j} softplus(s_l)`` over valid slots;
    softmax: ``exp(s_j) / sum_valid exp(s_l)``. Invalid slots get exactly 0.
    """
    if weighting == "stick_breaking":
        sp = torch.where(valid, F.softplus(scores), torch.zeros_like(scores))
        log_w = scores - torch.cumsum(sp, dim=-1)
        return torch.where(valid, torch.exp(log_w), torch.zeros_like(scores))
    if weighting == "softmax":
        masked = scores.masked_fill(~valid, float("-inf"))
        w = torch.softmax(masked, dim=-1)
        return torch.where(valid, w, torch.zeros_like(w))  # all-invalid rows: NaN -> 0
    raise ValueError(f"weighting must be 'stick_breaking' or 'softmax', got {weighting!r}")


def hsa_select_naive(
    q_r: Tensor,
    landmarks: Tensor,
    *,
    topk: int,
    chunk_size: int,
    q_offset: int = 0,
    weighting: str = "stick_breaking",
    scale: float | None = None,
    window: int | None = None,
    gumbel: bool = False,
) -> tuple[Tensor, Tensor]:
    """Reference selection. Shapes as :func:`hsa_core.ops.hsa_select`."""
    B, T, Hr, dr = q_r.shape
    C = landmarks.shape[1]
    scale = dr**-0.5 if scale is None else scale
    device = q_r.device
    indices = torch.full((B, T, Hr, topk), -1, dtype=torch.int32, device=device)
    if C == 0 or T == 0:
        # Empty selection; the zero weights stay connected to the inputs for autograd.
        weights = q_r.new_zeros((B, T, Hr, topk), dtype=torch.float32) + 0 * (q_r.sum() + landmarks.sum()).float()
        return indices, weights
    positions = torch.arange(T, device=device) + q_offset
    kk = min(topk, C)
    blk = query_block(T, Hr * C * 2)
    idx_blocks, w_blocks = [], []
    for t0 in range(0, T, blk):
        t1 = min(T, t0 + blk)
        # (B, Tb, Hr, C) scores in fp32; memory: one block of scores at a time.
        acc = torch.promote_types(q_r.dtype, torch.float32)
        s = torch.einsum("bthd,bchd->bthc", q_r[:, t0:t1].to(acc), landmarks.to(acc)) * scale
        vis = visible_chunks(positions[t0:t1], C, chunk_size, window)[None, :, None, :]
        with torch.no_grad():
            pick = s.detach()
            if gumbel:
                u = torch.rand_like(pick).clamp_(1e-20, 1.0)
                pick = pick - torch.log(-torch.log(u))
            pick = pick.masked_fill(~vis, float("-inf"))
            top_val, top_idx = torch.topk(pick, kk, dim=-1)
            ok = torch.isfinite(top_val)
            ids = torch.where(ok, top_idx, torch.full_like(top_idx, -1))
            ids, _ = torch.sort(ids, dim=-1, descending=True)  # most recent first, -1 last
        valid = ids >= 0
        sel = torch.gather(s, -1, ids.clamp(min=0).long())
        w = fusion_weights(sel, valid, weighting).float()
        idx_blocks.append(ids)
        w_blocks.append(w)
    ids = torch.cat(idx_blocks, 1).to(torch.int32)
    w = torch.cat(w_blocks, 1)
    if kk < topk:
        pad = topk - kk
        ids = torch.cat([ids, ids.new_full((B, T, Hr, pad), -1)], -1)
        w = torch.cat([w, w.new_zeros((B, T, Hr, pad))], -1)
    return ids, w


__all__ = ["fusion_weights", "hsa_select_naive", "visible_chunks"]
