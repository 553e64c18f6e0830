"""Autograd function and entry point of the Triton HSA attention.

``hsa_attention_triton(q, k, v, indices, weights, *, chunk_size, scale=None, sink=False)`` has the
semantics of :func:`hsa_core.ops.hsa_attention` (see ``naive.py`` for the reference twin).
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from .index import build_inverse_index as _build_inverse_index_triton
from .index import build_inverse_index_torch
from .kernels import (
    _hsa_bwd_dq_reduce_kernel,
    _hsa_bwd_fused_kernel,
    _hsa_bwd_kv_kernel,
    _hsa_bwd_kv_reduce_kernel,
    _hsa_bwd_q_kernel,
    _hsa_fwd_block_kernel,
    _hsa_fwd_chunk_kernel,
    _hsa_fwd_kernel,
    _hsa_fwd_tma_kernel,
)

LOG2E = 1.4426950408889634

# Launch settings, chosen by measurement on the H200 (bench/results/); overridable for sweeps.
CONFIG = {
    "fwd_warps": None, "fwd_stages": 3,
    "bwd_q_warps": 4, "bwd_q_stages": 2,
    "bwd_kv_rows": 64, "bwd_kv_warps": None, "bwd_kv_stages": 2, "bwd_kv_seg": 1024,
    # "fused": one chunk-outer pass does dK, dV, dW and per-pair dQ (then a slot-order reduce);
    # "split": query-side dQ/dW pass (re-reads K/V per pair) + chunk-side dK/dV pass.
    # "fused_atomic" (opt-in, untimed): the fused pass adds each pair's dQ contribution with fp32 atomics
    # into a (B,T,HQ,D) accumulator instead of the (B,T,H,K,G,D) per-pair buffer + reduce (1 GB at T=64K,
    # HQ=16, D=64, K=8); dQ is then NOT bitwise deterministic (atomic order varies run to run); dK, dV,
    # dW stay deterministic.
    "bwd_mode": "fused",
    # "query": query-outer forward (K/V tiles re-read per (token, slot) pair);
    # "chunk": chunk-outer forward over the inverse index (K/V read once per chunk segment, queries
    # gathered, per-pair outputs summed by a reduce kernel); the index is then reused by the backward.
    # "chunk_atomic" (opt-in, untimed): the chunk-outer kernel adds w_j O_j with fp32 atomics into a
    # (B,T,HQ,D) accumulator (no per-pair buffer round trip, no reduce); NOT bitwise deterministic (the
    # order of the atomic adds varies run to run). Its index is grouped by fwd_token_block (below) and is
    # not shared with the backward, which builds the plain one.
    # "block": blocks of fwd_block_rows // BLOCK_G tokens whose tokens chose at most fwd_block_share_max
    # distinct chunks go to a kernel that loads each distinct tile once for all the block's rows (with
    # fwd_block_warps warps), which flags them; every other token runs as in "query" (a second launch that
    # reads the flags).
    "fwd_block_rows": 64, "fwd_block_share_max": 16, "fwd_block_warps": 4, "fwd_block_stages": 3,
    # use_tma: query-outer forward loads K/V tiles through TMA descriptors (Hopper+; D a power of two)
    "fwd_mode": "query", "use_tma": False, "fwd_rows": 64, "fwd_chunk_warps": 4, "fwd_chunk_stages": 2,
    # "chunk_atomic": segments are ordered (b, h, token block, chunk) with blocks of this many tokens, so
    # the programs in flight add into the accumulators of one token block: 4096 tokens x 16 heads x D=64 x
    # 4 B = 16 MB of fp32, inside the H200's 50-60 MB L2 (with K/V of one head, 16 MB at 64K). None: plain
    # (b, h, c) order (accumulators of the whole sequence in flight).
    "fwd_token_block": 4096,
    # dtype of the per-pair buffers (forward outputs, dQ contributions): "input" (q's dtype) or "fp32"
    "pair_dtype": "input",
    # inverse index (chunk-outer forward, backward): "triton" (index.py, 5 launches) or "torch" (~38 ops).
    # Measured on the H200 at T=64K / 128K (bench/results/h200/sweep_fwd.log): triton 0.205 / 0.363 ms,
    # torch 0.674 / 0.904 ms; bitwise-identical output.
    "index_impl": "triton",
}


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tests compare against fp64); 16-bit inputs use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def _warps(key: str, tile: int) -> int:
    """num_warps: CONFIG's value, or by tile size (elements of the largest accumulator tile) when None.
    Measured on the H200 (G=16, D=S=64): forward best with 1 warp, fused backward with 4."""
    if CONFIG[key] is not None:
        return CONFIG[key]
    if key == "fwd_warps":
        return 1 if tile <= 1024 else 2 if tile <= 2048 else 4
    return 4 if tile <= 4096 else 8


def _block_g(G: int) -> int:
    # Rows of one program are the G heads of one token; tl.dot wants >= 16 rows.
    return max(16, triton.next_power_of_2(G))


def _check(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int) -> None:
    B, T, HQ, D = q.shape
    H = k.shape[2]
    if not 16 <= D <= 256:
        raise ValueError(f"head dim {D} not supported (16 <= D <= 256)")
    if HQ % H or k.shape != v.shape or k.shape[1] % chunk_size or indices.shape != (B, T, H, indices.shape[-1]):
        raise ValueError("bad shapes for hsa_attention")


def _contig(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def hsa_attention_fwd(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, chunk_size: int,
                      scale: float, sink: bool, store_lse: bool = True,
                      inv: dict[str, Tensor] | None = None, mode: str | None = None
                      ) -> tuple[Tensor, Tensor | None]:
    """Forward launch. Returns ``o`` (B,T,HQ,D) in q's dtype and ``lse`` (B,T,H,K,G) fp32 (log2 units).

    ``mode`` (default ``CONFIG["fwd_mode"]``): "query", "chunk" or "chunk_atomic" (see CONFIG; the last
    is not bitwise deterministic). ``inv``: a prebuilt inverse index for the chunk-outer modes (for
    "chunk_atomic" it may be token-blocked; its block count is read off ``seg_first``'s length).
    """
    B, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    G, S, C = HQ // H, chunk_size, k.shape[1] // chunk_size
    mode = mode or CONFIG["fwd_mode"]
    o = torch.empty_like(q)
    lse = torch.empty((B, T, H, K, G), device=q.device, dtype=torch.float32) if store_lse else o
    if T == 0 or B * H == 0:
        return o, lse
    if mode in ("chunk", "chunk_atomic") and C > 0:
        atomic = mode == "chunk_atomic"
        if inv is None:
            inv = build_inverse_index(indices, C, CONFIG["bwd_kv_seg"],
                                      token_block=CONFIG["fwd_token_block"] if atomic else None)
        ntb = inv["seg_first"].numel() // (B * H * C)  # groups (b, h, token block, c); 1 = plain (b, h, c)
        if not atomic and ntb != 1:
            raise ValueError("fwd_mode 'chunk' needs an index without token_block")
        bg, block_p = _kv_block_p(G, CONFIG["fwd_rows"])
        if atomic:
            op = torch.zeros((B, T, HQ, D), device=q.device, dtype=torch.float32)  # o32, added into
        else:
            op = torch.empty((B, T, H, K, G, D), device=q.device, dtype=_pair_dtype(q.dtype))
        _hsa_fwd_chunk_kernel[(inv["seg_chunk"].numel(),)](
            q, k, v, weights, inv["order"], inv["seg_chunk"], inv["seg_start"], inv["seg_end"], op, lse,
            T, C, H, G, ntb,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_G=bg, BLOCK_P=block_p, BLOCK_S=triton.next_power_of_2(S),
            BLOCK_D=triton.next_power_of_2(D), SINK=sink, STORE_LSE=store_lse, PREC=_prec(q.dtype),
            ATOMIC=atomic, num_warps=CONFIG["fwd_chunk_warps"], num_stages=CONFIG["fwd_chunk_stages"],
        )
        if atomic:
            # The sink only enlarges each chunk's softmax denominator (done in the kernel); it adds no
            # output, so empty rows stay 0, as in the reduce of "chunk" and in the reference.
            return op.to(q.dtype), (lse if store_lse else None)
        _hsa_bwd_dq_reduce_kernel[(T, B * H)](
            op, indices, o, T, C, H, G, o.stride(0), o.stride(1), o.stride(2),
            D=D, TOPK=K, BLOCK_G=bg, BLOCK_D=triton.next_power_of_2(D), num_warps=4,
        )
        return o, (lse if store_lse else None)
    shared, nb, block_kw = o, 0, {}  # SHARED / NB placeholders of the query-outer kernel outside "block"
    if mode == "block":
        # Blocks whose tokens share chunks are done by the block kernel, which writes a verdict per block
        # to `shared`; the query-outer kernel below reads it and does the other tokens one by one.
        bg = _block_g(G)
        block_t = max(1, CONFIG["fwd_block_rows"] // bg)
        nb = triton.cdiv(T, block_t)
        shared = torch.empty((B * H, nb), device=q.device, dtype=torch.int8)  # every entry written
        block_kw = dict(SKIP_SHARED=True, BLOCK_T=block_t)
        _hsa_fwd_block_kernel[(nb, B * H)](
            q, k, v, indices, weights, o, lse, shared,
            T, C, H, G, CONFIG["fwd_block_share_max"],
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_K=triton.next_power_of_2(K), BLOCK_T=block_t, BLOCK_G=bg,
            BLOCK_S=triton.next_power_of_2(S), BLOCK_D=triton.next_power_of_2(D), SINK=sink,
            STORE_LSE=store_lse, PREC=_prec(q.dtype),
            num_warps=CONFIG["fwd_block_warps"], num_stages=CONFIG["fwd_block_stages"],
        )
    grid = (T, B * H)
    tma_ok = triton.next_power_of_2(D) == D and k.is_contiguous() and v.is_contiguous()
    if CONFIG["use_tma"] and not block_kw and tma_ok:
        from triton.tools.tensor_descriptor import TensorDescriptor

        L = k.shape[1]
        block = [triton.next_power_of_2(S), 1, D]
        k_desc = TensorDescriptor.from_tensor(k.view(B * L, H, D), block_shape=block)
        v_desc = TensorDescriptor.from_tensor(v.view(B * L, H, D), block_shape=block)
        _hsa_fwd_tma_kernel[grid](
            q, k_desc, v_desc, indices, weights, o, lse,
            T, C, H, G, B * L, L,
            q.stride(0), q.stride(1), q.stride(2),
            o.stride(0), o.stride(1), o.stride(2),
            scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_G=_block_g(G), BLOCK_S=triton.next_power_of_2(S),
            BLOCK_D=D, SINK=sink, STORE_LSE=store_lse, PREC=_prec(q.dtype),
            num_warps=_warps("fwd_warps", _block_g(G) * triton.next_power_of_2(max(S, D))),
            num_stages=CONFIG["fwd_stages"],
        )
        return o, (lse if store_lse else None)
    _hsa_fwd_kernel[grid](
        q, k, v, indices, weights, o, lse,
        T, C, H, G,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        scale * LOG2E, shared, nb,
        S=S, D=D, TOPK=K, BLOCK_G=_block_g(G), BLOCK_S=triton.next_power_of_2(S),
        BLOCK_D=triton.next_power_of_2(D), SINK=sink, STORE_LSE=store_lse, PREC=_prec(q.dtype),
        num_warps=_warps("fwd_warps", _block_g(G) * triton.next_power_of_2(max(S, D))),
        num_stages=CONFIG["fwd_stages"], **block_kw,
    )
    return o, (lse if store_lse else None)


def _pair_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if CONFIG["pair_dtype"] == "fp32" else dtype


def build_inverse_index(indices: Tensor, num_chunks: int, seg: int,
                        token_block: int | None = None) -> dict[str, Tensor]:
    """Inverse index of the selection (see ``index.py``), by ``CONFIG["index_impl"]``: "triton" (three
    kernels + sort + cumsum) or "torch" (the naive twin, ~38 ops); both give bitwise-identical tensors.
    ``token_block``: group by (b, h, token block, c) (atomic chunk-outer forward only, not the backward)."""
    impl = CONFIG["index_impl"]
    if impl == "triton":
        return _build_inverse_index_triton(indices, num_chunks, seg, token_block)
    if impl == "torch":
        return build_inverse_index_torch(indices, num_chunks, seg, token_block)
    raise ValueError(f"CONFIG['index_impl'] must be 'triton' or 'torch', not {impl!r}")


def _kv_block_p(G: int, rows: int | None = None) -> tuple[int, int]:
    # Rows of the chunk-side program: BLOCK_P pairs x the G heads (no per-token padding needed here).
    bg = triton.next_power_of_2(G)
    block_p = max(1, (rows or CONFIG["bwd_kv_rows"]) // bg)
    if block_p * bg < 16:
        block_p = 16 // bg
    return bg, block_p


def hsa_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor,
                      lse: Tensor, chunk_size: int, scale: float,
                      inv: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward launches. Returns ``dq, dk, dv, dw`` (dw fp32, shaped like weights).

    ``CONFIG["bwd_mode"]``: "fused" (default), "split" or "fused_atomic" (see CONFIG; in the last, dQ is
    accumulated with fp32 atomics and is not bitwise deterministic, dK/dV/dW are).
    """
    B, T, HQ, D = q.shape
    H, K = k.shape[2], indices.shape[-1]
    G, S, C = HQ // H, chunk_size, k.shape[1] // chunk_size
    do = _contig(do)
    prec = _prec(q.dtype)
    BLOCK_G, BLOCK_S, BLOCK_D = _block_g(G), triton.next_power_of_2(S), triton.next_power_of_2(D)
    mode = CONFIG["bwd_mode"]
    if mode not in ("fused", "split", "fused_atomic"):
        raise ValueError(f"CONFIG['bwd_mode'] must be 'fused', 'split' or 'fused_atomic', not {mode!r}")
    fused, atomic_dq = mode in ("fused", "fused_atomic"), mode == "fused_atomic"
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if T == 0 or B * H == 0:
        return (torch.empty_like(q), dk.zero_(), dv.zero_(),
                torch.zeros(indices.shape, device=q.device, dtype=torch.float32))
    if C == 0:
        return torch.empty_like(q).zero_(), dk, dv, torch.zeros(indices.shape, device=q.device, dtype=torch.float32)
    # "fused_atomic" makes dq from its fp32 accumulator at the end (no q-dtype buffer held meanwhile).
    dq = None if atomic_dq else torch.empty_like(q)
    if inv is None:
        inv = build_inverse_index(indices, C, CONFIG["bwd_kv_seg"])
    n_seg = inv["seg_chunk"].numel()
    ws_k = torch.empty((n_seg, BLOCK_S, BLOCK_D), device=q.device, dtype=torch.float32)
    ws_v = torch.empty_like(ws_k)
    bg, block_p = _kv_block_p(G)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    if fused:
        # dW of empty slots stays 0; every valid pair's dW is written by the program that owns it.
        dw = torch.zeros(indices.shape, device=q.device, dtype=torch.float32)
        if atomic_dq:
            # dq32 (B,T,HQ,D) fp32, added into (scale applied in the kernel); rows of tokens with no valid
            # slot get no add and stay 0, as in the reduce.
            dqp = torch.zeros((B, T, HQ, D), device=q.device, dtype=torch.float32)
        else:
            # Per-pair dQ contributions in q's dtype (fp32 for fp32 inputs); summed in fp32 by the reduce.
            dqp = torch.empty((B, T, H, K, G, D), device=q.device, dtype=_pair_dtype(q.dtype))
        _hsa_bwd_fused_kernel[(n_seg,)](
            q, k, v, weights, do, lse, inv["order"], inv["seg_chunk"], inv["seg_start"], inv["seg_end"],
            ws_k, ws_v, dqp, dw,
            T, C, H, G, *strides, scale, scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_G=bg, BLOCK_P=block_p, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, PREC=prec,
            ATOMIC_DQ=atomic_dq,
            num_warps=_warps("bwd_kv_warps", BLOCK_S * BLOCK_D), num_stages=CONFIG["bwd_kv_stages"],
        )
        if atomic_dq:
            dq = dqp.to(q.dtype)
        else:
            _hsa_bwd_dq_reduce_kernel[(T, B * H)](
                dqp, indices, dq, T, C, H, G, dq.stride(0), dq.stride(1), dq.stride(2),
                D=D, TOPK=K, BLOCK_G=triton.next_power_of_2(G), BLOCK_D=BLOCK_D, num_warps=4,
            )
    else:
        dw = torch.empty(indices.shape, device=q.device, dtype=torch.float32)
        delta = torch.empty((B, T, H, K, G), device=q.device, dtype=torch.float32)
        _hsa_bwd_q_kernel[(T, B * H)](
            q, k, v, indices, weights, do, lse, dq, dw, delta,
            T, C, H, G, *strides[:9], *strides[9:],
            dq.stride(0), dq.stride(1), dq.stride(2),
            scale, scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_G=BLOCK_G, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, PREC=prec,
            num_warps=CONFIG["bwd_q_warps"], num_stages=CONFIG["bwd_q_stages"],
        )
        _hsa_bwd_kv_kernel[(n_seg,)](
            q, k, v, weights, do, lse, delta, inv["order"], inv["seg_chunk"], inv["seg_start"], inv["seg_end"],
            ws_k, ws_v,
            T, C, H, G, *strides, scale, scale * LOG2E,
            S=S, D=D, TOPK=K, BLOCK_G=bg, BLOCK_P=block_p, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, PREC=prec,
            num_warps=_warps("bwd_kv_warps", BLOCK_S * BLOCK_D), num_stages=CONFIG["bwd_kv_stages"],
        )
    _hsa_bwd_kv_reduce_kernel[(B * H * C,)](
        ws_k, ws_v, inv["seg_first"], inv["seg_count"], dk, dv,
        C, H,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        S=S, D=D, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return dq, dk, dv, dw


class HSAAttentionFunction(torch.autograd.Function):
    """``o = sum_j w_j softmax(q K_{c_j}^T * scale) V_{c_j}``; gradients to q, k, v and weights."""

    @staticmethod
    def forward(ctx, q, k, v, indices, weights, chunk_size, scale, sink):
        need_lse = any(ctx.needs_input_grad)
        C = k.shape[1] // chunk_size
        inv = None
        mode = CONFIG["fwd_mode"]
        tb = CONFIG["fwd_token_block"] if mode == "chunk_atomic" else None
        if mode in ("chunk", "chunk_atomic") and C > 0 and q.shape[1] > 0:
            inv = build_inverse_index(indices, C, CONFIG["bwd_kv_seg"], token_block=tb)
        o, lse = hsa_attention_fwd(q, k, v, indices, weights, chunk_size, scale, sink, store_lse=need_lse,
                                   inv=inv, mode=mode)
        # Shared with the backward only when it is the plain (b, h, c) index: the backward kernels assume
        # one group per chunk (a token-blocked index with one block, tb >= T, is the same tensors).
        ctx.inv = inv if tb is None or q.shape[1] <= tb else None
        if need_lse:
            ctx.save_for_backward(q, k, v, indices, weights, lse)
        ctx.chunk_size, ctx.scale = chunk_size, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, indices, weights, lse = ctx.saved_tensors
        dq, dk, dv, dw = hsa_attention_bwd(do, q, k, v, indices, weights, lse, ctx.chunk_size, ctx.scale,
                                           inv=ctx.inv)
        ctx.inv = None
        return dq, dk, dv, None, dw.to(weights.dtype), None, None, None


def hsa_attention_triton(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, *,
                         chunk_size: int, scale: float | None = None, sink: bool = False) -> Tensor:
    """Triton HSA attention; same contract as :func:`hsa_core.ops.hsa_attention`.

    Args:
        q: ``(B, T, HQ, D)``; k, v: ``(B, C*S, H, D)``; indices: ``(B, T, H, K)`` (-1 = empty slot,
            ids >= C are treated as empty too); weights: ``(B, T, H, K)``.
    Returns:
        ``(B, T, HQ, D)`` in q's dtype.
    """
    _check(q, k, v, indices, weights, chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = _contig(q), _contig(k), _contig(v)
    indices = indices.to(torch.int32).contiguous()
    weights = weights.contiguous()
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, weights))
    if q.shape[1] == 1 and not needs_grad and q.is_cuda:
        from hsa_kernels.hsa_decode import hsa_decode_triton  # one token x G heads: the decode path

        return hsa_decode_triton(q, k, v, indices, weights, chunk_size=chunk_size, scale=scale, sink=sink)
    return HSAAttentionFunction.apply(q, k, v, indices, weights, chunk_size, scale, sink)


__all__ = ["CONFIG", "HSAAttentionFunction", "build_inverse_index", "build_inverse_index_torch", "hsa_attention_bwd",
           "hsa_attention_fwd", "hsa_attention_triton"]
