"""Pure-PyTorch HSA: exact, differentiable, memory-light (runs everywhere).

Memory: queries are processed in blocks; for each block the chosen chunks' keys and values are
gathered, used and dropped. When gradients are needed each block runs under activation
checkpointing, so what autograd keeps is O(B*T*k) plus the inputs, never B x T x k x S x D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Elements of the gathered (B, Tq, H, k, S, D) tile a block may hold; bounds peak memory.
_BLOCK_ELEMENTS = 1 << 24


def _query_block(num_rows: int, per_token: int) -> int:
    return max(1, min(num_rows, _BLOCK_ELEMENTS // max(per_token, 1)))


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


def hsa_select_torch(
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
    blk = _query_block(T, Hr * C * 2)
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


def _attend_block(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, w: Tensor, chunk_size: int,
                  scale: float, sink: bool) -> Tensor:
    """One query block. q (B,Tb,HQ,D); k,v (B,C*S,H,D); idx,w (B,Tb,H,K) -> (B,Tb,HQ,D) in fp32 (fp64 for fp64)."""
    B, Tb, HQ, D = q.shape
    H, K, S = k.shape[2], idx.shape[-1], chunk_size
    G = HQ // H
    C = k.shape[1] // S
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation; fp64 stays fp64 (tests)
    valid = idx >= 0
    safe = idx.clamp(min=0, max=max(C - 1, 0)).long()
    kc = k.view(B, C, S, H, D).permute(0, 3, 1, 2, 4)  # (B,H,C,S,D)
    vc = v.view(B, C, S, H, D).permute(0, 3, 1, 2, 4)
    # Gather the chosen chunks: (B,H,Tb*K,S,D).
    g = safe.permute(0, 2, 1, 3).reshape(B, H, Tb * K)
    gi = g[..., None, None].expand(B, H, Tb * K, S, D)
    kg = torch.gather(kc, 2, gi).view(B, H, Tb, K, S, D).to(acc)
    vg = torch.gather(vc, 2, gi).view(B, H, Tb, K, S, D).to(acc)
    qh = q.view(B, Tb, H, G, D).permute(0, 2, 1, 3, 4).to(acc)  # (B,H,Tb,G,D)
    logits = torch.einsum("bhtgd,bhtksd->bhtgks", qh, kg) * scale
    if sink:
        m = logits.amax(-1, keepdim=True).clamp(min=0.0)
        e = torch.exp(logits - m)
        p = e / (e.sum(-1, keepdim=True) + torch.exp(-m))
    else:
        p = torch.softmax(logits, dim=-1)
    o = torch.einsum("bhtgks,bhtksd->bhtgkd", p, vg)  # per-chunk outputs
    wt = torch.where(valid, w.to(acc), torch.zeros_like(w, dtype=acc))
    wt = wt.permute(0, 2, 1, 3)[:, :, :, None, :, None]  # (B,H,Tb,1,K,1)
    out = (o * wt).sum(4)  # (B,H,Tb,G,D)
    return out.permute(0, 2, 1, 3, 4).reshape(B, Tb, HQ, D)


def hsa_attention_torch(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, *,
                        chunk_size: int, scale: float | None = None, sink: bool = False) -> Tensor:
    """Reference HSA attention. Shapes as :func:`hsa_core.ops.hsa_attention`."""
    _, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    scale = D**-0.5 if scale is None else scale
    if T == 0 or K == 0 or k.shape[1] == 0:
        # Nothing to attend to: exact zeros that still carry a (zero) gradient path to the inputs.
        return (q * 0 + (weights.sum() * 0).to(q.dtype)).to(q.dtype) if q.numel() else q.clone()
    blk = _query_block(T, H * K * chunk_size * (D * 2 + HQ // H * 2))
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, weights))
    outs = []
    for t0 in range(0, T, blk):
        t1 = min(T, t0 + blk)
        args = (q[:, t0:t1], k, v, indices[:, t0:t1], weights[:, t0:t1], chunk_size, scale, sink)
        if need_grad and blk < T:
            outs.append(checkpoint(_attend_block, *args, use_reentrant=False))
        else:
            outs.append(_attend_block(*args))
    return torch.cat(outs, 1).to(q.dtype)
