"""Naive HSA attention: the exact pure-PyTorch reference (runs everywhere, differentiable).

``hsa_attention_naive(q, k, v, indices, weights, *, chunk_size, scale=None, sink=False)``
q ``(B, T, HQ, D)``; k, v ``(B, C*S, H, D)``; indices/weights ``(B, T, H, K)`` -> ``(B, T, HQ, D)``:
``sum_j w_j * softmax(q K_{c_j}^T * scale) V_{c_j}`` over the valid slots (index -1 gives nothing).
:func:`hsa_core.ops.hsa_attention` runs it off CUDA; the kernel tests run it in fp64 as ground truth.

Memory: queries are processed in blocks; for each block the chosen chunks' keys and values are
gathered, used and dropped. When gradients are needed each block runs under activation
checkpointing, so what autograd keeps is O(B*T*k) plus the inputs, never B x T x k x S x D.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Elements of the gathered (B, Tq, H, k, S, D) tile a block may hold; bounds peak memory.
_BLOCK_ELEMENTS = 1 << 24


def query_block(num_rows: int, per_token: int) -> int:
    """Tokens per block so that one block's temporaries hold at most ``_BLOCK_ELEMENTS`` elements."""
    return max(1, min(num_rows, _BLOCK_ELEMENTS // max(per_token, 1)))


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


def hsa_attention_naive(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, *,
                        chunk_size: int, scale: float | None = None, sink: bool = False) -> Tensor:
    """Reference HSA attention. Shapes as :func:`hsa_core.ops.hsa_attention`; output in q's dtype."""
    _, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    scale = D**-0.5 if scale is None else scale
    if T == 0 or K == 0 or k.shape[1] == 0:
        # Nothing to attend to: exact zeros that still carry a (zero) gradient path to the inputs.
        return (q * 0 + (weights.sum() * 0).to(q.dtype)).to(q.dtype) if q.numel() else q.clone()
    blk = query_block(T, H * K * chunk_size * (D * 2 + HQ // H * 2))
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


__all__ = ["hsa_attention_naive", "query_block"]
