"""Fused HSA selection kernel: scores against landmarks, causal rule (+ window), running top-k, sort by
recency and the fusion weights, in one pass over the landmarks. Memory O(T * k): the T x C score matrix
never exists.

Layouts: q_r (B, T, Hr, dr); landmarks (B, C, Hr, dr); outputs idx int32 / w fp32 / s fp32 (B, T, Hr, K).

One program = BLOCK_T tokens of one (b, hr). For each block of BLOCK_C visible landmarks it computes the
(BLOCK_T, BLOCK_C) score tile with tl.dot (looping over dr), packs each score with its chunk id into one
int64 key (order-preserving integer image of the fp32 score in the high word, the id in the low word),
and merges the tile's top-KP into the running top-KP with tl.topk. Packing keeps the exact fp32 score,
so weights need no second pass.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sortable(x):
    """fp32 -> int32 whose signed order is the float order (non-NaN)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _unsortable(k):
    bits = k ^ ((k >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _hsa_select_kernel(
    QR, LM, IDX, WGT, SC,
    T, C, HR, DR, q_offset, shift,
    stride_qb, stride_qt, stride_qh,
    stride_lb, stride_lc, stride_lh,
    scale,
    S: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    STICK: tl.constexpr, PREC: tl.constexpr, MERGE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HR
    h = bh % HR
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    tmask = offs_t < T
    # visible chunks of each token: i < floor((q_offset + t - shift) / S), clamped to [0, C]
    nvis = tl.minimum(tl.maximum((q_offset + offs_t - shift) // S, 0), C)
    nvis = tl.where(tmask, nvis, 0)
    n_max = tl.max(nvis, 0)
    q_base = QR + b * stride_qb + h * stride_qh + offs_t.to(tl.int64)[:, None] * stride_qt
    l_base = LM + b * stride_lb + h * stride_lh
    sentinel = tl.full([BLOCK_T, KP], -(2**31), tl.int64) << 32  # below any packed score
    run = sentinel
    for c0 in range(0, n_max, BLOCK_C):
        cc = c0 + offs_c
        acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        for d0 in range(0, DR, BLOCK_D):
            dd = d0 + offs_d
            dm = dd < DR
            qt = tl.load(q_base + dd[None, :], mask=tmask[:, None] & dm[None, :], other=0.0)
            lt = tl.load(l_base + cc.to(tl.int64)[:, None] * stride_lc + dd[None, :],
                         mask=(cc < C)[:, None] & dm[None, :], other=0.0)
            acc = tl.dot(qt, tl.trans(lt), acc, input_precision=PREC)
        s = acc * scale
        vis = cc[None, :] < nvis[:, None]
        key = (_sortable(s).to(tl.int64) << 32) | cc.to(tl.int64)[None, :]
        key = tl.where(vis, key, tl.full([BLOCK_T, BLOCK_C], -(2**31), tl.int64) << 32)
        if MERGE == 0:
            # measurement only: scores without the top-k (gives the cost of the merge by difference)
            run = tl.maximum(run, tl.max(key, 1)[:, None])
        elif MERGE == 2:
            # skip the tile when no row has a candidate above its current k-th best
            better = tl.max((tl.max(key, 1) > tl.min(run, 1)).to(tl.int32), 0)
            if better > 0:
                blk = tl.topk(key, KP, dim=1)
                run = tl.topk(tl.reshape(tl.join(run, blk), [BLOCK_T, 2 * KP]), KP, dim=1)
        else:
            blk = tl.topk(key, KP, dim=1)
            run = tl.topk(tl.reshape(tl.join(run, blk), [BLOCK_T, 2 * KP]), KP, dim=1)
    # run: (BLOCK_T, KP) sorted by score descending; keep the first TOPK.
    rank = tl.arange(0, KP)[None, :]
    hi = (run >> 32).to(tl.int32)
    cid = (run & 0xFFFFFFFF).to(tl.int32)
    valid = (hi != -(2**31)) & (rank < TOPK)
    score = _unsortable(hi)
    # Sort by recency: id descending, empty slots (-1) last; the score rides in the low word.
    key2 = (tl.where(valid, cid, -1).to(tl.int64) << 32) | (_sortable(score).to(tl.int64) & 0xFFFFFFFF)
    key2 = tl.sort(key2, dim=1, descending=True)
    cid = (key2 >> 32).to(tl.int32)
    valid = cid >= 0
    score = _unsortable((key2 & 0xFFFFFFFF).to(tl.int32))
    score = tl.where(valid, score, 0.0)
    if STICK:
        # log w_j = s_j - sum_{l<=j} softplus(s_l); empty slots are last, so a prefix sum is enough.
        sp = tl.maximum(score, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(score)))
        sp = tl.where(valid, sp, 0.0)
        w = tl.exp(score - tl.cumsum(sp, axis=1))
    else:
        m = tl.max(tl.where(valid, score, float("-inf")), 1)
        m = tl.where(m == float("-inf"), 0.0, m)
        e = tl.where(valid, tl.exp(score - m[:, None]), 0.0)
        den = tl.sum(e, 1)
        w = e / tl.where(den > 0, den, 1.0)[:, None]
    w = tl.where(valid, w, 0.0)
    out = ((b * T + offs_t.to(tl.int64)) * HR + h)[:, None] * TOPK + rank
    omask = tmask[:, None] & (rank < TOPK)
    tl.store(IDX + out, cid, mask=omask)
    tl.store(WGT + out, w, mask=omask)
    tl.store(SC + out, score, mask=omask)
