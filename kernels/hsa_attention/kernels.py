"""Triton kernels of HSA attention: forward (query- and chunk-outer) and backward (fused and split).

Layouts (all row-major, last dim contiguous):
    q, o, do       (B, T, HQ, D)      HQ = H * G; the G query heads of KV head h are h*G .. h*G+G-1
    k, v, dk, dv   (B, C*S, H, D)     chunk c of head h is rows c*S .. c*S+S-1
    idx, w, dw     (B, T, H, K)       idx int32, -1 = empty slot
    lse, delta     (B, T, H, K, G)    fp32; lse in log2 units (what exp2 wants)

Schedules (defaults in function.CONFIG, chosen by measurement: bench/results/h200/README.md):
    forward, query-outer (default)  one program = one token x the G heads of one KV head (rows padded
                      to BLOCK_G >= 16 for tl.dot); it loops over the K chosen chunks and loads each
                      chunk's K/V tile straight from k/v at row id*S (no gathered copy); one softmax per
                      chunk, LSE stored. `_hsa_fwd_tma_kernel` is the same with TMA tile loads.
    forward, token-block (opt-in)   `_hsa_fwd_block_kernel`: one program = a block of BLOCK_T tokens;
                      when they chose few distinct chunks, each distinct K/V tile is loaded once for all
                      the block's rows; it flags the blocks it did, and `_hsa_fwd_kernel` (SKIP_SHARED),
                      launched next, does the other tokens one by one.
    forward, chunk-outer            `_hsa_fwd_chunk_kernel`: one program = one segment of the pairs that
                      chose one chunk; K/V loaded once, queries gathered, per-pair outputs summed in slot
                      order by `_hsa_bwd_dq_reduce_kernel`. With ATOMIC (fwd_mode "chunk_atomic") the
                      outputs are added with fp32 atomics into (B,T,HQ,D) instead (not deterministic).
    backward, fused (default)       `_hsa_bwd_fused_kernel`, chunk-outer over the inverse index: dK/dV
                      partial per segment (workspace, then `_hsa_bwd_kv_reduce_kernel` adds a chunk's
                      segments in order), dW and a per-pair dQ contribution written by the program that
                      owns the pair (no atomics: deterministic), dQ summed in slot order. With
                      ATOMIC_DQ (bwd_mode "fused_atomic") dQ is added with fp32 atomics into (B,T,HQ,D)
                      instead (no per-pair buffer, no reduce; dQ not deterministic).
    backward, split                 `_hsa_bwd_q_kernel` (query-side dQ, dW, delta) + `_hsa_bwd_kv_kernel`
                      (chunk-side dK/dV). Both are linear in T; a popular chunk is split into segments,
                      so it does not serialise the backward.
"""

from __future__ import annotations

import triton
import triton.language as tl


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

    SKIP_SHARED (fwd_mode "block"): return at once when SHARED (B*H, NB) int8, written by
    `_hsa_fwd_block_kernel` just before, flags the token's block of BLOCK_T tokens as done there.
    """
    t = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    if SKIP_SHARED:  # noqa: SIM102 (a constexpr branch, compiled out when False)
        if tl.load(SHARED + bh * NB + t // BLOCK_T) != 0:
            return
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = offs_g < G
    dmask = offs_d < D
    smask = offs_s < S

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
    slots, ids, valid, ids_f, first, n_distinct = _block_distinct(IDX, b, h, t0, T, H, C, TOPK, BLOCK_T, BLOCK_K)
    tl.store(SHARED + bh * tl.num_programs(0) + pid, (n_distinct <= SHARE_MAX).to(tl.int8))
    if n_distinct > SHARE_MAX:
        return
    offs_k = tl.arange(0, BLOCK_K)
    offs_e = tl.arange(0, BLOCK_T * BLOCK_K)
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = offs_g < G
    dmask = offs_d < D
    smask = offs_s < S
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
            lse = tl.reshape(m + tl.log2(den), [BLOCK_T, 1, BLOCK_G])
            lse_ptr = LSE + ((slots[:, None] + offs_k[None, :]) * G)[:, :, None] + offs_g[None, None, :]
            tl.store(lse_ptr, tl.broadcast_to(lse, [BLOCK_T, BLOCK_K, BLOCK_G]),
                     mask=match[:, :, None] & gmask[None, None, :])
    o_ptrs = (OUT + b * stride_ob + (t0 + r_tok)[:, None] * stride_ot + (h * G + r_g)[:, None] * stride_oh
              + offs_d[None, :])
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _hsa_bwd_q_kernel(
    Q, K, V, IDX, W, DO, LSE, DQ, DW, DELTA,
    T, C, H, G,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    stride_dqb, stride_dqt, stride_dqh,
    scale, qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """dQ and dW query-side; also delta_j = w_j * rowsum(dO * O_j) per (token, slot, head) for dK/dV."""
    t = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = offs_g < G
    dmask = offs_d < D
    smask = offs_s < S
    qmask = gmask[:, None] & dmask[None, :]
    heads = (h * G + offs_g)[:, None]
    q = tl.load(Q + b * stride_qb + t * stride_qt + heads * stride_qh + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b * stride_dob + t * stride_dot + heads * stride_doh + offs_d[None, :], mask=qmask,
                 other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    slot = ((b * T + t) * H + h) * TOPK
    dq = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        cid = tl.load(IDX + slot + j)
        valid = (cid >= 0) & (cid < C)
        w = tl.load(W + slot + j).to(tl.float32)
        w = tl.where(valid, w, 0.0)
        rows = cid.to(tl.int64) * S + offs_s
        kvmask = (smask[:, None] & dmask[None, :]) & valid
        kt = tl.load(k_base + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask, other=0.0)
        vt = tl.load(v_base + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask, other=0.0)
        lse = tl.load(LSE + (slot + j) * G + offs_g, mask=gmask & valid, other=float("inf"))
        s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
        if BLOCK_S != S:
            s = tl.where(smask[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # normalised probabilities of chunk j; 0 on empty slots
        dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
        rowdot = tl.sum(p * dp, 1)  # (BLOCK_G,) = rowsum(dO * O_j), without recomputing O_j
        tl.store(DW + slot + j, tl.where(valid, tl.sum(rowdot, 0), 0.0))
        tl.store(DELTA + (slot + j) * G + offs_g, w * rowdot, mask=gmask)
        ds = p * (dp - rowdot[:, None]) * w
        dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
    dq_ptrs = DQ + b * stride_dqb + t * stride_dqt + heads * stride_dqh + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _hsa_bwd_kv_kernel(
    Q, K, V, W, DO, LSE, DELTA, ORDER, SEG_CHUNK, SEG_START, SEG_END, WS_K, WS_V,
    T, C, H, G,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    scale, qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """Partial dK/dV of one segment of one chunk's inverse list; rows = BLOCK_P pairs x BLOCK_G heads."""
    sid = tl.program_id(0).to(tl.int64)
    chunk = tl.load(SEG_CHUNK + sid).to(tl.int64)  # flat (b, h, c); -1 = unused segment
    if chunk < 0:
        return
    start = tl.load(SEG_START + sid).to(tl.int64)
    end = tl.load(SEG_END + sid).to(tl.int64)
    bh = chunk // C
    c = chunk % C
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_P * BLOCK_G)
    r_pair = offs_r // BLOCK_G
    r_head = offs_r % BLOCK_G
    dmask = offs_d < D
    smask = offs_s < S
    kvmask = smask[:, None] & dmask[None, :]
    rows = c * S + offs_s
    kt = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    vt = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    n_iter = tl.cdiv(end - start, BLOCK_P)
    for it in range(n_iter):
        pos = start + it * BLOCK_P + r_pair
        pvalid = pos < end
        pair = tl.load(ORDER + pos, mask=pvalid, other=0).to(tl.int64)  # flat (b, t, h, j)
        t = (pair // (TOPK * H)) % T
        rvalid = pvalid & (r_head < G)
        rmask = rvalid[:, None] & dmask[None, :]
        heads = h * G + r_head
        qr = tl.load(Q + b * stride_qb + t[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                     mask=rmask, other=0.0)
        dor = tl.load(DO + b * stride_dob + t[:, None] * stride_dot + heads[:, None] * stride_doh
                      + offs_d[None, :], mask=rmask, other=0.0)
        lse = tl.load(LSE + pair * G + r_head, mask=rvalid, other=float("inf"))
        delta = tl.load(DELTA + pair * G + r_head, mask=rvalid, other=0.0)
        w = tl.load(W + pair, mask=rvalid, other=0.0).to(tl.float32)
        s = tl.dot(qr, tl.trans(kt), input_precision=PREC) * qk_scale  # (R, BLOCK_S)
        if BLOCK_S != S:
            s = tl.where(smask[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # padded rows: lse = inf -> p = 0
        dv += tl.dot(tl.trans((p * w[:, None]).to(vt.dtype)), dor, input_precision=PREC)
        dp = tl.dot(dor, tl.trans(vt), input_precision=PREC)
        ds = p * (dp * w[:, None] - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(qr.dtype)), qr, input_precision=PREC)
    ws_off = sid * (BLOCK_S * BLOCK_D) + offs_s[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(WS_K + ws_off, dk * scale)
    tl.store(WS_V + ws_off, dv)


@triton.jit
def _hsa_bwd_kv_reduce_kernel(
    WS_K, WS_V, SEG_FIRST, SEG_COUNT, DK, DV,
    C, H,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    S: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dK/dV of one chunk = its segments' partial sums, added in segment order (deterministic)."""
    chunk = tl.program_id(0).to(tl.int64)
    first = tl.load(SEG_FIRST + chunk).to(tl.int64)
    count = tl.load(SEG_COUNT + chunk)
    bh = chunk // C
    c = chunk % C
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    tile = offs_s[:, None] * BLOCK_D + offs_d[None, :]
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for i in range(count):
        off = (first + i) * (BLOCK_S * BLOCK_D)
        dk += tl.load(WS_K + off + tile)
        dv += tl.load(WS_V + off + tile)
    rows = c * S + offs_s
    mask = (offs_s < S)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + b * stride_kb + h * stride_kh + rows[:, None] * stride_kt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + b * stride_vb + h * stride_vh + rows[:, None] * stride_vt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _hsa_bwd_fused_kernel(
    Q, K, V, W, DO, LSE, ORDER, SEG_CHUNK, SEG_START, SEG_END, WS_K, WS_V, DQP, DW,
    T, C, H, G,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh,
    scale, qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    """The whole backward, chunk-outer, for one segment of one chunk's inverse list.

    Each (token, slot) pair is visited by exactly one program, so everything that belongs to the pair is
    written without atomics: dW_j = sum(dO * O_j) and delta = w_j rowsum(dO * O_j), where
    rowsum(dO * O_j) = rowsum(P * dP) needs no O_j; the pair's dQ contribution dS K goes to a per-pair
    buffer DQP (B,T,H,K,G,D) that a reduce kernel sums over slots in order. dK/dV accumulate in
    registers (partial per segment, as in the split path).
    Compared with the query-side pass this avoids re-reading each chosen chunk's K/V tile per pair.

    ATOMIC_DQ (bwd_mode "fused_atomic"): the pair's dQ contribution is instead added with fp32 atomics
    into DQP = dq32 (B,T,HQ,D), zero-initialised (no per-pair buffer, no reduce; dQ is then not bitwise
    deterministic: the order of the adds varies). dK, dV and dW are unchanged (deterministic).
    """
    sid = tl.program_id(0).to(tl.int64)
    chunk = tl.load(SEG_CHUNK + sid).to(tl.int64)
    if chunk < 0:
        return
    start = tl.load(SEG_START + sid).to(tl.int64)
    end = tl.load(SEG_END + sid).to(tl.int64)
    bh = chunk // C
    c = chunk % C
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_P * BLOCK_G)
    offs_p = tl.arange(0, BLOCK_P)
    r_pair = offs_r // BLOCK_G
    r_head = offs_r % BLOCK_G
    dmask = offs_d < D
    smask = offs_s < S
    kvmask = smask[:, None] & dmask[None, :]
    rows = c * S + offs_s
    kt = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    vt = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    n_iter = tl.cdiv(end - start, BLOCK_P)
    for it in range(n_iter):
        p0 = start + it * BLOCK_P
        pos = p0 + r_pair
        pvalid = pos < end
        pair = tl.load(ORDER + pos, mask=pvalid, other=0).to(tl.int64)  # flat (b, t, h, j)
        t = (pair // (TOPK * H)) % T
        rvalid = pvalid & (r_head < G)
        rmask = rvalid[:, None] & dmask[None, :]
        heads = h * G + r_head
        qr = tl.load(Q + b * stride_qb + t[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                     mask=rmask, other=0.0)
        dor = tl.load(DO + b * stride_dob + t[:, None] * stride_dot + heads[:, None] * stride_doh
                      + offs_d[None, :], mask=rmask, other=0.0)
        lse = tl.load(LSE + pair * G + r_head, mask=rvalid, other=float("inf"))
        w = tl.load(W + pair, mask=rvalid, other=0.0).to(tl.float32)
        s = tl.dot(qr, tl.trans(kt), input_precision=PREC) * qk_scale  # (R, BLOCK_S)
        if BLOCK_S != S:
            s = tl.where(smask[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # padded rows: lse = inf -> p = 0
        dp = tl.dot(dor, tl.trans(vt), input_precision=PREC)
        # rowsum(dO * O_j) = rowsum(P * (dO V^T)): no need to recompute O_j = P V (one dot fewer, and
        # fewer live registers: the 4-warp version of this kernel spilled with the extra tile).
        rowdot = tl.sum(p * dp, 1)  # (R,)
        # dW_j: sum of rowdot over the G heads of the pair
        dwp = tl.sum(tl.reshape(rowdot, [BLOCK_P, BLOCK_G]), 1)
        ppos = p0 + offs_p
        pp = tl.load(ORDER + ppos, mask=ppos < end, other=0).to(tl.int64)
        tl.store(DW + pp, dwp, mask=ppos < end)
        dv += tl.dot(tl.trans((p * w[:, None]).to(vt.dtype)), dor, input_precision=PREC)
        ds = p * (dp - rowdot[:, None]) * w[:, None]
        dsc = ds.to(qr.dtype)
        dk += tl.dot(tl.trans(dsc), qr, input_precision=PREC)
        dqp = tl.dot(dsc, kt, input_precision=PREC) * scale  # this pair's dQ contribution
        if ATOMIC_DQ:
            bt = pair // (TOPK * H)  # flat (b, t) of the pair; DQP row (b, t, h*G + head) of (B,T,HQ,D)
            tl.atomic_add(DQP + ((bt * H + h) * G + r_head)[:, None] * D + offs_d[None, :], dqp, mask=rmask,
                          sem="relaxed")
        else:
            tl.store(DQP + (pair * G + r_head)[:, None] * D + offs_d[None, :], dqp.to(DQP.dtype.element_ty),
                     mask=rmask)
    ws_off = sid * (BLOCK_S * BLOCK_D) + offs_s[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(WS_K + ws_off, dk * scale)
    tl.store(WS_V + ws_off, dv)


@triton.jit
def _hsa_bwd_dq_reduce_kernel(
    DQP, IDX, DQ,
    T, C, H, G,
    stride_dqb, stride_dqt, stride_dqh,
    D: tl.constexpr, TOPK: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dQ of one token x G heads = its slots' per-pair contributions, added in slot order."""
    t = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    m = (offs_g < G)[:, None] & (offs_d < D)[None, :]
    slot = ((b * T + t) * H + h) * TOPK
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        cid = tl.load(IDX + slot + j)
        valid = (cid >= 0) & (cid < C)
        acc += tl.load(DQP + ((slot + j) * G + offs_g)[:, None] * D + offs_d[None, :], mask=m & valid,
                       other=0.0).to(tl.float32)
    tl.store(DQ + b * stride_dqb + t * stride_dqt + (h * G + offs_g)[:, None] * stride_dqh + offs_d[None, :],
             acc.to(DQ.dtype.element_ty), mask=m)


@triton.jit
def _hsa_fwd_chunk_kernel(
    Q, K, V, W, ORDER, SEG_CHUNK, SEG_START, SEG_END, OP, LSE,
    T, C, H, G, NTB,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK: tl.constexpr, STORE_LSE: tl.constexpr, PREC: tl.constexpr, ATOMIC: tl.constexpr,
):
    """Chunk-outer forward for one segment of one chunk's inverse list.

    The chunk's K/V tile is loaded once and reused by every (token, slot) pair that chose it; each pair's
    queries are gathered (G*D elements instead of the 2*S*D of a K/V tile) and its weighted output
    w_j O_j goes to a per-pair buffer OP (B,T,H,K,G,D) that a reduce kernel sums over slots in order.

    ATOMIC: w_j O_j is instead added with fp32 atomics into OP = o32 (B,T,HQ,D), zero-initialised (no
    per-pair buffer, no reduce; not bitwise deterministic: the order of the adds varies). The segment
    table's groups are then flat (b, h, token block, c) with NTB token blocks per (b, h) (index.py,
    ``token_block``), so that the accumulators of the tokens in flight stay in L2; NTB = 1 is the plain
    (b, h, c) layout. The LSE is written per pair exactly as without ATOMIC.
    """
    sid = tl.program_id(0).to(tl.int64)
    chunk = tl.load(SEG_CHUNK + sid).to(tl.int64)  # flat group ((b*H + h)*NTB + token block)*C + c
    if chunk < 0:
        return
    start = tl.load(SEG_START + sid).to(tl.int64)
    end = tl.load(SEG_END + sid).to(tl.int64)
    bh = chunk // (C * NTB)
    c = chunk % C
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_P * BLOCK_G)
    r_pair = offs_r // BLOCK_G
    r_head = offs_r % BLOCK_G
    dmask = offs_d < D
    smask = offs_s < S
    kvmask = smask[:, None] & dmask[None, :]
    rows = c * S + offs_s
    kt = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    vt = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vt + offs_d[None, :], mask=kvmask,
                 other=0.0)
    n_iter = tl.cdiv(end - start, BLOCK_P)
    for it in range(n_iter):
        pos = start + it * BLOCK_P + r_pair
        pvalid = pos < end
        pair = tl.load(ORDER + pos, mask=pvalid, other=0).to(tl.int64)
        t = (pair // (TOPK * H)) % T
        rvalid = pvalid & (r_head < G)
        rmask = rvalid[:, None] & dmask[None, :]
        qr = tl.load(Q + b * stride_qb + t[:, None] * stride_qt + (h * G + r_head)[:, None] * stride_qh
                     + offs_d[None, :], mask=rmask, other=0.0)
        w = tl.load(W + pair, mask=rvalid, other=0.0).to(tl.float32)
        o, m, den = _chunk_attend(qr, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
        o = o * (w / den)[:, None]
        if ATOMIC:
            bt = pair // (TOPK * H)  # flat (b, t) of the pair; OP row (b, t, h*G + head) of (B,T,HQ,D)
            tl.atomic_add(OP + ((bt * H + h) * G + r_head)[:, None] * D + offs_d[None, :], o, mask=rmask,
                          sem="relaxed")
        else:
            tl.store(OP + (pair * G + r_head)[:, None] * D + offs_d[None, :], o.to(OP.dtype.element_ty),
                     mask=rmask)
        if STORE_LSE:
            tl.store(LSE + pair * G + r_head, m + tl.log2(den), mask=rvalid)


@triton.jit
def _hsa_fwd_tma_kernel(
    Q, k_desc, v_desc, IDX, W, OUT, LSE,
    T, C, H, G, L_TOTAL, L,
    stride_qb, stride_qt, stride_qh,
    stride_ob, stride_ot, stride_oh,
    qk_scale,
    S: tl.constexpr, D: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SINK: tl.constexpr, STORE_LSE: tl.constexpr, PREC: tl.constexpr,
):
    """Query-outer forward with K/V tiles fetched by the tensor-memory accelerator (TMA).

    k_desc / v_desc describe k, v viewed as (B*L, H, D) with (BLOCK_S, 1, BLOCK_D) tiles. An empty slot
    points its tile past the end (row B*L): TMA fills it with zeros without touching memory.
    """
    t = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = offs_g < G
    dmask = offs_d < D
    smask = offs_s < S
    q_ptrs = Q + b * stride_qb + t * stride_qt + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=gmask[:, None] & dmask[None, :], other=0.0)
    slot = ((b * T + t) * H + h) * TOPK
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        cid = tl.load(IDX + slot + j)
        valid = (cid >= 0) & (cid < C)
        w = tl.load(W + slot + j).to(tl.float32)
        w = tl.where(valid, w, 0.0)
        row = tl.where(valid, b * L + cid * S, L_TOTAL).to(tl.int32)
        kt = k_desc.load([row, h.to(tl.int32), 0]).reshape(BLOCK_S, BLOCK_D)
        vt = v_desc.load([row, h.to(tl.int32), 0]).reshape(BLOCK_S, BLOCK_D)
        o, m, den = _chunk_attend(q, kt, vt, smask, qk_scale, S, BLOCK_S, SINK, PREC)
        acc += o * (w / den)[:, None]
        if STORE_LSE:
            tl.store(LSE + (slot + j) * G + offs_g, m + tl.log2(den), mask=gmask)
    o_ptrs = OUT + b * stride_ob + t * stride_ot + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])
