"""HSA attention backward: the Triton kernels, then the launcher.

Layouts as in ``forward.py``; dq, dk, dv like q, k, v; dw (B, T, H, K) fp32.

Schedule (the one kept: 2.1 ms against 3.2-3.5 ms for a query-side + chunk-side split at 64K on the
H200, ``bench/results/h200/README.md``): `_hsa_bwd_fused_kernel`, chunk-outer over the inverse index
(``index.py``): one program = one segment of the (token, slot) pairs that chose one chunk. The chunk's
K/V tile is loaded once; dK/dV accumulate in registers (a partial per segment, in a workspace that
`_hsa_bwd_kv_reduce_kernel` sums in segment order); dW and a per-pair dQ contribution are written by the
program that owns the pair (no atomics: deterministic), and `_hsa_bwd_dq_reduce_kernel` sums each
token's contributions in slot order. Linear in T; a popular chunk is split into segments, so it does
not serialise the backward.

``atomic_dq=True`` (opt-in, measured: 466 MiB instead of 1234 MiB fwd+bwd peak at 64K, 3.32 ms
instead of 3.22): the pair's dQ contribution is added with fp32 atomics into a (B,T,HQ,D) accumulator
instead of the (B,T,H,K,G,D) per-pair buffer + reduce; dQ is then not bitwise deterministic (the order
of the adds varies), dK, dV and dW are unchanged.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .forward import LOG2E
from .index import build_inverse_index
from .launch import AttentionLaunch, contiguous_rows, dot_precision, dot_tile, settings_for, warps_for


@triton.jit
def _chunk_coords(chunk, C, H):
    """(b, h, c) of the flat chunk id ``(b*H + h)*C + c`` of the inverse index."""
    bh = chunk // C
    return bh // H, bh % H, chunk % C


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
    registers (a partial per segment).

    ATOMIC_DQ (``atomic_dq=True``): the pair's dQ contribution is instead added with fp32 atomics
    into DQP = dq32 (B,T,HQ,D), zero-initialised (no per-pair buffer, no reduce; dQ is then not bitwise
    deterministic: the order of the adds varies). dK, dV and dW are unchanged (deterministic).
    """
    sid = tl.program_id(0).to(tl.int64)
    chunk = tl.load(SEG_CHUNK + sid).to(tl.int64)
    if chunk < 0:
        return
    start = tl.load(SEG_START + sid).to(tl.int64)
    end = tl.load(SEG_END + sid).to(tl.int64)
    b, h, c = _chunk_coords(chunk, C, H)
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
    b, h, c = _chunk_coords(chunk, C, H)
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


def _pairs_per_program(G: int, rows: int) -> tuple[int, int]:
    """(padded heads, pairs) of one chunk-side program: ``rows // heads`` pairs, at least 16 rows for tl.dot."""
    bg = triton.next_power_of_2(G)
    block_p = max(1, rows // bg)
    if block_p * bg < 16:
        block_p = 16 // bg
    return bg, block_p


def hsa_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor,
                      lse: Tensor, chunk_size: int, scale: float, *, atomic_dq: bool = False,
                      launch: AttentionLaunch | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward launches. Returns ``dq, dk, dv, dw`` (dw fp32, shaped like weights).

    ``lse``: the forward's (B,T,H,K,G) log2-unit LSE. ``atomic_dq``: see the module docstring.
    """
    B, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    G, S, C = HQ // H, chunk_size, k.shape[1] // chunk_size
    launch = launch or settings_for(q.device)
    do = contiguous_rows(do)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if T == 0 or B * H == 0:
        return (torch.empty_like(q), dk.zero_(), dv.zero_(),
                torch.zeros(indices.shape, device=q.device, dtype=torch.float32))
    if C == 0:
        return torch.empty_like(q).zero_(), dk, dv, torch.zeros(indices.shape, device=q.device, dtype=torch.float32)
    BLOCK_S, BLOCK_D = dot_tile(S), dot_tile(D)
    inv = build_inverse_index(indices, C, launch.bwd_seg)
    n_seg = inv["seg_chunk"].numel()
    ws_k = torch.empty((n_seg, BLOCK_S, BLOCK_D), device=q.device, dtype=torch.float32)
    ws_v = torch.empty_like(ws_k)
    bg, block_p = _pairs_per_program(G, launch.bwd_rows)
    # dW of empty slots stays 0; every valid pair's dW is written by the program that owns it.
    dw = torch.zeros(indices.shape, device=q.device, dtype=torch.float32)
    if atomic_dq:
        # dq32 (B,T,HQ,D) fp32, added into (scale applied in the kernel); rows of tokens with no valid
        # slot get no add and stay 0, as in the reduce.
        dqp = torch.zeros((B, T, HQ, D), device=q.device, dtype=torch.float32)
    else:
        # Per-pair dQ contributions in q's dtype (fp32 for fp32 inputs); summed in fp32 by the reduce.
        dqp = torch.empty((B, T, H, K, G, D), device=q.device, dtype=q.dtype)
    _hsa_bwd_fused_kernel[(n_seg,)](
        q, k, v, weights, do, lse, inv["order"], inv["seg_chunk"], inv["seg_start"], inv["seg_end"],
        ws_k, ws_v, dqp, dw,
        T, C, H, G,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        scale, scale * LOG2E,
        S=S, D=D, TOPK=K, BLOCK_G=bg, BLOCK_P=block_p, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D,
        PREC=dot_precision(q.dtype), ATOMIC_DQ=atomic_dq,
        num_warps=warps_for(launch.bwd_warps, BLOCK_S * BLOCK_D, forward=False), num_stages=launch.bwd_stages,
    )
    if atomic_dq:
        dq = dqp.to(q.dtype)
    else:
        dq = torch.empty_like(q)
        _hsa_bwd_dq_reduce_kernel[(T, B * H)](
            dqp, indices, dq, T, C, H, G, dq.stride(0), dq.stride(1), dq.stride(2),
            D=D, TOPK=K, BLOCK_G=triton.next_power_of_2(G), BLOCK_D=BLOCK_D, num_warps=4,
        )
    _hsa_bwd_kv_reduce_kernel[(B * H * C,)](
        ws_k, ws_v, inv["seg_first"], inv["seg_count"], dk, dv,
        C, H,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        S=S, D=D, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return dq, dk, dv, dw


__all__ = ["hsa_attention_bwd"]
