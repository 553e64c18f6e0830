"""An experimental HSA attention forward, kept out of the kernel package until the H200 says it wins:
query-outer over a block of tokens, each distinct chunk's K/V tile loaded once per block.

Why (``bench/results/h200/before_after/README.md``): the default query-outer forward reads one K and
one V tile per (token, slot) pair, 8.6 GB at 64K tokens, at the L2 ceiling; the forward is 1.74-1.99x
the published kernel on selections recorded from the real-text RAMba, against a bar of 3x, which at the
same bandwidth needs at least 38% fewer bytes. On those selections 4-token blocks repeat a third of
their slots' chunks and 8-token blocks half (record_selections.py). The token-block forward
(``schedule="block"``) loads each distinct tile once but runs every row of the block against it,
multiplying the matrix work by the union's size over k (2.7x at 4 tokens): it measured level with
query-outer there. This one runs, for each distinct chunk, only the tokens that chose it, with the
same 16-row tiles as query-outer, so the bytes fall by the repeat rate and the matrix work stays
query-outer's. The price: a branch per (chunk, token) in the loop, which keeps Triton from pipelining
the tile loads across iterations (occupancy has to hide the L2 latency instead), and a masked update of
the block's (BLOCK_T, G, D) accumulator per pair.

``hsa_attention_fwd_dedup(q, k, v, indices, weights, chunk_size, scale, sink, block_t=4)`` returns
``(o, lse)`` in the layouts of ``hsa_kernels.hsa_attention.forward`` (the backward reads the same LSE),
equal to the query-outer forward up to the order of the fp32 sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hsa_kernels.hsa_attention.forward import LOG2E, _block_distinct, _chunk_attend, _tile_offsets
from hsa_kernels.hsa_attention.launch import block_g, dot_precision, dot_tile
from torch import Tensor


@triton.jit
def _pick(vec, offs, i):
    """``vec[i]`` of a 1-D tensor as a scalar (a register tensor cannot be indexed at run time)."""
    return tl.sum(tl.where(offs == i, vec, 0), 0)


@triton.jit
def _hsa_fwd_dedup_kernel(
    Q, K, V, IDX, W, OUT, LSE,
    T, C, H, G,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK: tl.constexpr, STORE_LSE: tl.constexpr, PREC: tl.constexpr,
):
    """One program = BLOCK_T consecutive tokens x the G heads of one KV head. For each distinct chunk the
    block chose (first-use order), its K/V tile is loaded once; each token that chose it attends to it
    with its own G rows and adds the result, weighted by its total weight on the chunk, into its rows of
    the block's accumulator."""
    pid = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t0 = pid * BLOCK_T
    slots, ids, valid, ids_f, first, n_distinct = _block_distinct(IDX, b, h, t0, T, H, C, TOPK, BLOCK_T, BLOCK_K)
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    offs_e = tl.arange(0, BLOCK_T * BLOCK_K)
    offs_g, offs_s, offs_d, gmask, smask, dmask = _tile_offsets(G, S, D, BLOCK_G, BLOCK_S, BLOCK_D)
    kvmask = smask[:, None] & dmask[None, :]
    qmask = gmask[:, None] & dmask[None, :]
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    q_rows = Q + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :]
    ws = tl.where(valid, tl.load(W + slots[:, None] + offs_k[None, :], mask=valid, other=0.0).to(tl.float32), 0.0)
    acc = tl.zeros([BLOCK_T, BLOCK_G, BLOCK_D], dtype=tl.float32)
    pos = tl.cumsum(first.to(tl.int32), 0) - 1
    uniq = tl.sum(tl.where(first[:, None] & (pos[:, None] == offs_e[None, :]), ids_f[:, None], 0), 0)
    for u in range(n_distinct):
        cid = _pick(uniq, offs_e, u)
        rows = cid.to(tl.int64) * S + offs_s  # int64: contexts beyond 2^31 / (H*D) tokens
        kt = tl.load(k_base + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        vt = tl.load(v_base + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        match = valid & (ids == cid)  # (BLOCK_T, BLOCK_K): the slots that chose this chunk
        w_tok = tl.sum(tl.where(match, ws, 0.0), 1)  # (BLOCK_T,) a token's total weight on it
        chose = tl.max(match.to(tl.int32), 1)  # (BLOCK_T,)
        for i in tl.static_range(BLOCK_T):
            if _pick(chose, offs_t, i) != 0:
                q = tl.load(q_rows + (t0 + i) * stride_qt, mask=qmask, other=0.0)
                o, m, den = _chunk_attend(q, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
                o = o * (_pick(w_tok, offs_t, i) / den)[:, None]
                acc += tl.where((offs_t == i)[:, None, None], o[None, :, :], 0.0)
                if STORE_LSE:
                    mine = tl.max(tl.where((offs_t == i)[:, None], match.to(tl.int32), 0), 0)  # (BLOCK_K,)
                    slot_i = _pick(slots, offs_t, i)
                    lse_ptr = LSE + ((slot_i + offs_k) * G)[:, None] + offs_g[None, :]
                    lse = tl.broadcast_to((m + tl.log2(den))[None, :], [BLOCK_K, BLOCK_G])
                    tl.store(lse_ptr, lse, mask=(mine != 0)[:, None] & gmask[None, :])
    toks = t0 + offs_t
    o_ptrs = (OUT + b * stride_ob + toks[:, None, None] * stride_ot + (h * G + offs_g)[None, :, None] * stride_oh
              + offs_d[None, None, :])
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=(toks < T)[:, None, None] & qmask[None, :, :])


def hsa_attention_fwd_dedup(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int,
                            scale: float, sink: bool, *, block_t: int = 4, store_lse: bool = True,
                            num_warps: int = 4, num_stages: int = 1) -> tuple[Tensor, Tensor | None]:
    """The forward of one call: ``q`` (B, T, HQ, D), ``k``/``v`` (B, C*S, H, D), ``indices`` int32 and
    ``weights`` (B, T, H, K), contiguous last dims; ``block_t`` a power of two.

    Returns ``o`` (B, T, HQ, D) in q's dtype and, with ``store_lse``, ``lse`` (B, T, H, K, G) fp32 in
    log2 units (entries of empty slots unspecified), as ``hsa_attention_fwd``.
    """
    if block_t < 1 or block_t & (block_t - 1):
        raise ValueError(f"block_t must be a power of two, got {block_t}")
    B, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    G, S, C = HQ // H, chunk_size, k.shape[1] // chunk_size
    o = torch.empty_like(q)  # every row is written (zeros for a token without a valid slot)
    lse = torch.empty((B, T, H, K, G), device=q.device, dtype=torch.float32) if store_lse else o
    if T == 0 or B * H == 0:
        return o, (lse if store_lse else None)
    grid = (triton.cdiv(T, block_t), B * H)
    _hsa_fwd_dedup_kernel[grid](
        q, k, v, indices, weights, o, lse, T, C, H, G,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        scale * LOG2E,
        S=S, D=D, TOPK=K, BLOCK_K=triton.next_power_of_2(K), BLOCK_T=block_t, BLOCK_G=block_g(G),
        BLOCK_S=dot_tile(S), BLOCK_D=dot_tile(D), SINK=sink, STORE_LSE=store_lse, PREC=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return o, (lse if store_lse else None)
