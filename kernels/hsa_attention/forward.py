"""HSA attention forward: the Triton kernels, then the launcher that picks among them.

Layouts (all row-major, last dim contiguous):
    q, o           (B, T, HQ, D)      HQ = H * G; the G query heads of KV head h are h*G .. h*G+G-1
    k, v           (B, C*S, H, D)     chunk c of head h is rows c*S .. c*S+S-1
    idx, w         (B, T, H, K)       idx int32, -1 = empty slot (ids >= C count as empty too)
    lse            (B, T, H, K, G)    fp32, log2 units (what exp2 wants); read by the backward

Schedules (``schedule=``; measured on the H200, ``bench/results/h200/README.md``):
    "query"   `_hsa_fwd_kernel`: one program = one token x the G heads of one KV head (rows
              padded to BLOCK_G >= 16 for tl.dot); it loops over the K chosen chunks and loads each
              chunk's K/V tile straight from k/v at row id*S (no gathered copy); one softmax per chunk,
              LSE stored. At 84% of the L2 bandwidth on uniform selections; on selections recorded
              from the real-text RAMba, within noise of "block" (64K: 0.98 vs 1.22 ms on one machine,
              1.15 vs 1.08 on another); on the demo RAMba's passkey selections "block" wins (0.81 vs
              0.88-0.98 ms). Several tokens per program, one after the other, was never faster and
              was deleted (``bench/results/h200/README.md``).
    "block"   (default) `_hsa_fwd_block_kernel` first: one program = a block of BLOCK_T consecutive tokens; when
              they chose at most ``block_share_max`` distinct chunks, each distinct K/V tile is loaded
              once for all the block's rows, and the block's verdict (int8) is written; then
              `_hsa_fwd_kernel` with SKIP_SHARED skips the blocks done there and does the rest token by
              token. 1.3-1.5x "query" when neighbouring tokens share chunks (one selection per 64-token
              block), 3-20% slower when they do not (run7).
An automatic choice made on the device ("auto": a sampling kernel, then the block kernel writing "not
shared" verdicts below a threshold) made the forward 9-45% slower than "query" at 16K-64K (up to 2.2x at
4K) on uniform and on recorded selections, and was deleted (commit 3f0466d holds it); see
``bench/results/h200/before_after/README.md``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import AttentionLaunch, block_g, dot_precision, dot_tile, settings_for, warps_for

LOG2E = 1.4426950408889634
#: Values of ``schedule=`` (see the module docstring).
SCHEDULES = ("query", "block")


@triton.jit
def _chunk_attend(q, kt, vt, smask, qk_scale, S: tl.constexpr, BLOCK_S: tl.constexpr, SINK: tl.constexpr,
                  PREC: tl.constexpr):
    """Softmax attention of the rows of ``q`` (R, BLOCK_D) over one chunk's tile ``kt``, ``vt``
    (BLOCK_S, BLOCK_D), in log2 units (``qk_scale`` includes log2(e)).

    Returns ``o`` (R, BLOCK_D) fp32 = exp2(s - m) @ V, not yet divided by ``den``; ``m`` (R,) the row max
    (at least 0 with SINK, the sink logit); ``den`` (R,) the softmax denominator (with the sink's
    exp2(-m)). LSE = m + log2(den). One softmax per chunk: HSA combines chunk outputs linearly with
    weights that are already normalised, so no online rescaling across chunks is needed.
    """
    s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale  # (R, BLOCK_S)
    if BLOCK_S != S:
        s = tl.where(smask[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    if SINK:
        m = tl.maximum(m, 0.0)  # the sink logit is 0
    p = tl.exp2(s - m[:, None])
    den = tl.sum(p, 1)
    if SINK:
        den += tl.exp2(-m)
    return tl.dot(p.to(vt.dtype), vt, input_precision=PREC), m, den


@triton.jit
def _tile_offsets(G, S, D, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets of a tile's head rows, chunk rows and feature columns, and their in-range masks."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    return offs_g, offs_s, offs_d, offs_g < G, offs_s < S, offs_d < D


@triton.jit
def _block_distinct(IDX, b, h, t0, T, H, C, TOPK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """The selection of tokens t0 .. t0+BLOCK_T-1 (one KV head) and its distinct chunks.

    Returns ``slots`` (BLOCK_T,) flat (b, t, h, 0) offsets into idx / w, ``ids`` and ``valid``
    (BLOCK_T, BLOCK_K), ``ids_f`` / ``first`` (BLOCK_T*BLOCK_K,) the flattened ids (-1 when not valid)
    and whether each entry is the first valid use of its chunk, and their count (a scalar).
    """
    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K)
    toks = t0 + offs_t
    slots = ((b * T + toks) * H + h) * TOPK
    emask = (toks < T)[:, None] & (offs_k < TOPK)[None, :]
    ids = tl.load(IDX + slots[:, None] + offs_k[None, :], mask=emask, other=-1)
    valid = emask & (ids >= 0) & (ids < C)
    ids_f = tl.reshape(tl.where(valid, ids, -1), [BLOCK_T * BLOCK_K])
    offs_e = tl.arange(0, BLOCK_T * BLOCK_K)
    same = (ids_f[:, None] == ids_f[None, :]) & (offs_e[None, :] < offs_e[:, None])
    first = (ids_f >= 0) & (tl.max(same.to(tl.int32), 1) == 0)
    return slots, ids, valid, ids_f, first, tl.sum(first.to(tl.int32), 0)


@triton.jit
def _hsa_fwd_kernel(
    Q, K, V, IDX, W, OUT, LSE,
    T, C, H, G,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    qk_scale, SHARED, NB,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK: tl.constexpr, STORE_LSE: tl.constexpr, PREC: tl.constexpr,
    SKIP_SHARED: tl.constexpr = False, BLOCK_T: tl.constexpr = 1,
):
    """Query-outer forward: one program = one token x the G heads of one KV head.

    SKIP_SHARED (schedule "block"): return at once when SHARED (B*H, NB) int8, written by
    `_hsa_fwd_block_kernel` just before, flags the token's block of BLOCK_T tokens as done there.
    """
    t = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    if SKIP_SHARED:  # noqa: SIM102 (a constexpr branch, compiled out when False)
        if tl.load(SHARED + bh * NB + t // BLOCK_T) != 0:
            return
    offs_g, offs_s, offs_d, gmask, smask, dmask = _tile_offsets(G, S, D, BLOCK_G, BLOCK_S, BLOCK_D)

    q_ptrs = Q + b * stride_qb + t * stride_qt + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=gmask[:, None] & dmask[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    slot = ((b * T + t) * H + h) * TOPK  # flat (b, t, h, 0) in idx / w
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        cid = tl.load(IDX + slot + j)
        valid = (cid >= 0) & (cid < C)
        w = tl.load(W + slot + j).to(tl.float32)
        w = tl.where(valid, w, 0.0)
        rows = cid.to(tl.int64) * S + offs_s  # int64: contexts beyond 2^31 / (H*D) tokens
        # Masked (not branched) so the loop stays a straight line that the pipeliner can overlap;
        # an empty slot issues no memory traffic and contributes w = 0.
        kvmask = (smask[:, None] & dmask[None, :]) & valid
        kt = tl.load(k_base + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        vt = tl.load(v_base + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        o, m, den = _chunk_attend(q, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
        acc += o * (w / den)[:, None]
        if STORE_LSE:
            tl.store(LSE + (slot + j) * G + offs_g, m + tl.log2(den), mask=gmask)
    o_ptrs = OUT + b * stride_ob + t * stride_ot + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])


@triton.jit
def _hsa_fwd_block_kernel(
    Q, K, V, IDX, W, OUT, LSE, SHARED,
    T, C, H, G, SHARE_MAX,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK: tl.constexpr, STORE_LSE: tl.constexpr, PREC: tl.constexpr,
):
    """Forward of a block of BLOCK_T consecutive tokens x the G heads of one KV head whose tokens chose
    at most SHARE_MAX distinct chunks. Every program writes its verdict to SHARED (B*H, NB) int8; the
    other blocks return at once and `_hsa_fwd_kernel` with SKIP_SHARED, launched next, does them token
    by token.

    Each distinct K/V tile is loaded once and run against all BLOCK_T*BLOCK_G rows, each row weighted by
    its token's total weight on that chunk (0 when the token did not choose it): U tile loads instead of
    BLOCK_T*K, at BLOCK_T times the matrix work per tile. A token's chunks are added in first-use order
    within the block rather than slot order, so this agrees with the token-by-token kernel to rounding,
    not bit for bit; which kernel handles a block depends on the selection only (deterministic).
    """
    pid = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t0 = pid * BLOCK_T
    verdict = SHARED + bh * tl.num_programs(0) + pid
    slots, ids, valid, ids_f, first, n_distinct = _block_distinct(IDX, b, h, t0, T, H, C, TOPK, BLOCK_T, BLOCK_K)
    tl.store(verdict, (n_distinct <= SHARE_MAX).to(tl.int8))
    if n_distinct > SHARE_MAX:
        return
    offs_k = tl.arange(0, BLOCK_K)
    offs_e = tl.arange(0, BLOCK_T * BLOCK_K)
    offs_g, offs_s, offs_d, gmask, smask, dmask = _tile_offsets(G, S, D, BLOCK_G, BLOCK_S, BLOCK_D)
    kvmask = smask[:, None] & dmask[None, :]
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    ws = tl.where(valid, tl.load(W + slots[:, None] + offs_k[None, :], mask=valid, other=0.0).to(tl.float32), 0.0)
    offs_r = tl.arange(0, BLOCK_T * BLOCK_G)
    r_tok = offs_r // BLOCK_G
    r_g = offs_r % BLOCK_G
    rmask = ((t0 + r_tok) < T) & (r_g < G)
    q = tl.load(Q + b * stride_qb + (t0 + r_tok)[:, None] * stride_qt + (h * G + r_g)[:, None] * stride_qh
                + offs_d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    acc = tl.zeros([BLOCK_T * BLOCK_G, BLOCK_D], dtype=tl.float32)
    # Each slot's LSE, gathered over the loop and stored once at the end: one contiguous (BLOCK_T, K, G)
    # store instead of a masked scatter per chunk.
    lse_all = tl.zeros([BLOCK_T, BLOCK_K, BLOCK_G], dtype=tl.float32)
    # The distinct chunks packed in first-use order, so that the loop below has no branch (a branch in
    # the loop body keeps Triton from pipelining the tile loads across iterations).
    pos = tl.cumsum(first.to(tl.int32), 0) - 1
    uniq = tl.sum(tl.where(first[:, None] & (pos[:, None] == offs_e[None, :]), ids_f[:, None], 0), 0)
    for u in range(n_distinct):
        cid = tl.sum(tl.where(offs_e == u, uniq, 0), 0)
        rows = cid.to(tl.int64) * S + offs_s  # int64: contexts beyond 2^31 / (H*D) tokens
        kt = tl.load(k_base + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        vt = tl.load(v_base + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        o, m, den = _chunk_attend(q, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
        match = valid & (ids == cid)  # (BLOCK_T, BLOCK_K): the slots that chose this chunk
        w_tok = tl.sum(tl.where(match, ws, 0.0), 1)  # (BLOCK_T,)
        w_row = tl.reshape(tl.broadcast_to(w_tok[:, None], [BLOCK_T, BLOCK_G]), [BLOCK_T * BLOCK_G])
        acc += o * (w_row / den)[:, None]
        if STORE_LSE:
            lse_all = tl.where(match[:, :, None], tl.reshape(m + tl.log2(den), [BLOCK_T, 1, BLOCK_G]), lse_all)
    if STORE_LSE:
        lse_ptr = LSE + ((slots[:, None] + offs_k[None, :]) * G)[:, :, None] + offs_g[None, None, :]
        tl.store(lse_ptr, lse_all, mask=valid[:, :, None] & gmask[None, None, :])
    o_ptrs = (OUT + b * stride_ob + (t0 + r_tok)[:, None] * stride_ot + (h * G + r_g)[:, None] * stride_oh
              + offs_d[None, :])
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])



def check_schedule(schedule: str) -> None:
    """Raises ValueError unless ``schedule`` is one of :data:`SCHEDULES`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")


def hsa_attention_fwd(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int,
                      scale: float, sink: bool, *, schedule: str = "block", store_lse: bool = True,
                      launch: AttentionLaunch | None = None) -> tuple[Tensor, Tensor | None]:
    """Forward launches on contiguous-last-dim inputs, int32 ``indices``.

    Returns ``o`` (B,T,HQ,D) in q's dtype and, with ``store_lse``, ``lse`` (B,T,H,K,G) fp32 in log2 units
    (entries of empty slots unspecified). ``launch``: default :func:`~.launch.settings_for` q's device.
    """
    check_schedule(schedule)
    B, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    G, S, C = HQ // H, chunk_size, k.shape[1] // chunk_size
    launch = launch or settings_for(q.device)
    o = torch.empty_like(q)
    lse = torch.empty((B, T, H, K, G), device=q.device, dtype=torch.float32) if store_lse else o
    if T == 0 or B * H == 0:
        return o, (lse if store_lse else None)
    bg = block_g(G)
    block_t = max(1, launch.block_rows // bg)
    tiles = dict(S=S, D=D, TOPK=K, BLOCK_G=bg, BLOCK_S=dot_tile(S), BLOCK_D=dot_tile(D),
                 SINK=sink, STORE_LSE=store_lse, PREC=dot_precision(q.dtype))
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2))
    verdict, nb, skip_kw = o, 0, {}  # the query-outer kernel's VERDICT / NB are unused without a block launch
    if schedule == "block":
        nb = triton.cdiv(T, block_t)
        verdict = torch.empty((B * H, nb), device=q.device, dtype=torch.int8)  # every entry written
        skip_kw = dict(SKIP_SHARED=True, BLOCK_T=block_t)
        _hsa_fwd_block_kernel[(nb, B * H)](
            q, k, v, indices, weights, o, lse, verdict,
            T, C, H, G, launch.block_share_max, *strides, scale * LOG2E,
            BLOCK_K=triton.next_power_of_2(K), BLOCK_T=block_t, **tiles,
            num_warps=launch.block_warps, num_stages=launch.block_stages,
        )
    _hsa_fwd_kernel[(T, B * H)](
        q, k, v, indices, weights, o, lse, T, C, H, G, *strides, scale * LOG2E, verdict, nb, **tiles,
        num_warps=warps_for(launch.fwd_warps, bg * triton.next_power_of_2(max(S, D)), forward=True),
        num_stages=launch.fwd_stages, **skip_kw,
    )
    return o, (lse if store_lse else None)


__all__ = ["LOG2E", "SCHEDULES", "check_schedule", "hsa_attention_fwd"]
