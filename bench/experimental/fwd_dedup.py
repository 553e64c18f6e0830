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
the tile loads across iterations (occupancy has to hide the L2 latency instead: compiled for sm_90
with 3 stages it keeps 1 stage's shared memory), and per-token tiles written out under compile-time
guards, as a register tensor cannot be indexed by token at run time. Compiled for sm_90 (ptxas):
tokens x warps 4 x 2: 230 registers, 4 x 4: 164, 4 x 8: 128, 8 x 4: 234, 8 x 8: 184, no spills;
2 x 4: 128 with 8 bytes spilled; 4 x 1 and 8 x 2 spill more.

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
def _token_pair(acc, q, i, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask, gmask, qk_scale, LSE, G,
                S: tl.constexpr, BLOCK_S: tl.constexpr, SINK: tl.constexpr, PREC: tl.constexpr,
                STORE_LSE: tl.constexpr):
    """Token ``i`` of the block (its rows ``q``, its accumulator ``acc``, both (BLOCK_G, BLOCK_D)) against
    the chunk tile ``kt``/``vt`` when it chose that chunk: the attention, weighted by its total weight
    on the chunk, is added to ``acc``; its LSE goes to every slot of the token that holds the chunk."""
    if _pick(chose, offs_t, i) != 0:
        o, m, den = _chunk_attend(q, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
        acc += o * (_pick(w_tok, offs_t, i) / den)[:, None]
        if STORE_LSE:
            mine = tl.max(tl.where((offs_t == i)[:, None], match.to(tl.int32), 0), 0)  # (BLOCK_K,)
            lse_ptr = LSE + ((_pick(slots, offs_t, i) + offs_k) * G)[:, None] + offs_g[None, :]
            lse = tl.broadcast_to((m + tl.log2(den))[None, :], [offs_k.shape[0], offs_g.shape[0]])
            tl.store(lse_ptr, lse, mask=(mine != 0)[:, None] & gmask[None, :])
    return acc


@triton.jit
def _load_rows(ptrs, t, T, stride_t, mask):
    """The (BLOCK_G, BLOCK_D) rows of token ``t`` (zeros past T)."""
    return tl.load(ptrs + t * stride_t, mask=mask & (t < T), other=0.0)


@triton.jit
def _store_rows(ptrs, acc, t, T, stride_t, mask):
    tl.store(ptrs + t * stride_t, acc.to(ptrs.dtype.element_ty), mask=mask & (t < T))


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
    """One program = BLOCK_T (2, 4 or 8) consecutive tokens x the G heads of one KV head. For each distinct
    chunk the block chose (first-use order), its K/V tile is loaded once; each token that chose it
    attends to it with its own G rows and adds the result, weighted by its total weight on the chunk, to
    its accumulator. Each token's rows and accumulator are their own tiles (written out per token under
    compile-time guards: a register tensor cannot be indexed by token at run time, and a 3-D
    accumulator updated through a mask would convert the chunk output's layout on every pair)."""
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
    q0 = _load_rows(q_rows, t0, T, stride_qt, qmask)
    q1 = _load_rows(q_rows, t0 + 1, T, stride_qt, qmask)
    acc0 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if BLOCK_T > 2:
        q2 = _load_rows(q_rows, t0 + 2, T, stride_qt, qmask)
        q3 = _load_rows(q_rows, t0 + 3, T, stride_qt, qmask)
    else:
        q2 = q0
        q3 = q0
    acc2 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if BLOCK_T > 4:
        q4 = _load_rows(q_rows, t0 + 4, T, stride_qt, qmask)
        q5 = _load_rows(q_rows, t0 + 5, T, stride_qt, qmask)
        q6 = _load_rows(q_rows, t0 + 6, T, stride_qt, qmask)
        q7 = _load_rows(q_rows, t0 + 7, T, stride_qt, qmask)
    else:
        q4 = q0
        q5 = q0
        q6 = q0
        q7 = q0
    acc4 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc6 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc7 = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
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
        acc0 = _token_pair(acc0, q0, 0, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask, gmask,
                           qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
        acc1 = _token_pair(acc1, q1, 1, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask, gmask,
                           qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
        if BLOCK_T > 2:
            acc2 = _token_pair(acc2, q2, 2, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
            acc3 = _token_pair(acc3, q3, 3, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
        if BLOCK_T > 4:
            acc4 = _token_pair(acc4, q4, 4, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
            acc5 = _token_pair(acc5, q5, 5, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
            acc6 = _token_pair(acc6, q6, 6, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
            acc7 = _token_pair(acc7, q7, 7, chose, w_tok, offs_t, offs_k, offs_g, match, slots, kt, vt, smask,
                               gmask, qk_scale, LSE, G, S, BLOCK_S, SINK, PREC, STORE_LSE)
    o_rows = OUT + b * stride_ob + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :]
    _store_rows(o_rows, acc0, t0, T, stride_ot, qmask)
    _store_rows(o_rows, acc1, t0 + 1, T, stride_ot, qmask)
    if BLOCK_T > 2:
        _store_rows(o_rows, acc2, t0 + 2, T, stride_ot, qmask)
        _store_rows(o_rows, acc3, t0 + 3, T, stride_ot, qmask)
    if BLOCK_T > 4:
        _store_rows(o_rows, acc4, t0 + 4, T, stride_ot, qmask)
        _store_rows(o_rows, acc5, t0 + 5, T, stride_ot, qmask)
        _store_rows(o_rows, acc6, t0 + 6, T, stride_ot, qmask)
        _store_rows(o_rows, acc7, t0 + 7, T, stride_ot, qmask)


def hsa_attention_fwd_dedup(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int,
                            scale: float, sink: bool, *, block_t: int = 4, store_lse: bool = True,
                            num_warps: int = 4, num_stages: int = 1) -> tuple[Tensor, Tensor | None]:
    """The forward of one call: ``q`` (B, T, HQ, D), ``k``/``v`` (B, C*S, H, D), ``indices`` int32 and
    ``weights`` (B, T, H, K), contiguous last dims; ``block_t`` tokens per program: 2, 4 or 8.

    Returns ``o`` (B, T, HQ, D) in q's dtype and, with ``store_lse``, ``lse`` (B, T, H, K, G) fp32 in
    log2 units (entries of empty slots unspecified), as ``hsa_attention_fwd``.
    """
    if block_t not in (2, 4, 8):
        raise ValueError(f"block_t must be 2, 4 or 8, got {block_t}")
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
