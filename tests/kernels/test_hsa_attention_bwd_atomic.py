"""The fused backward with atomic dQ (``CONFIG["bwd_mode"] = "fused_atomic"``) vs the fp64 naive twin and
vs the default "fused" backward.

The fused chunk-outer kernel adds each pair's dQ contribution with fp32 atomics into a (B,T,HQ,D)
accumulator instead of writing it to the (B,T,H,K,G,D) per-pair buffer that a reduce kernel sums; dK, dV
and dW take the same path as in "fused" (bitwise equal here). Forwards: "query" (default) and
"chunk_atomic". CPU: Triton interpreter; 16-bit inputs in fp16 (bf16 tl.dot is wrong in the interpreter;
bf16 runs under ``-m gpu``). dQ is not bitwise deterministic on a GPU (atomic order): tolerances only.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.function as fn
import pytest
import torch
from hsa_kernels.hsa_attention import hsa_attention_triton

from . import test_hsa_attention as base
from .helpers import PoisonTorch, one_chunk_case, rel_err

DEV = base.DEV
_inputs, _run = base._inputs, base._run


class SpyTorch(PoisonTorch):
    """PoisonTorch that also records the shape and dtype of every fresh buffer the wrapper allocates."""

    def __init__(self) -> None:
        self.allocs: list[tuple[tuple[int, ...], torch.dtype]] = []

    def _rec(self, t: torch.Tensor) -> torch.Tensor:
        self.allocs.append((tuple(t.shape), t.dtype))
        return t

    def empty(self, *args, **kwargs):
        return self._rec(super().empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._rec(super().empty_like(*args, **kwargs))

    def zeros(self, *args, **kwargs):
        return self._rec(torch.zeros(*args, **kwargs))

    def zeros_like(self, *args, **kwargs):
        return self._rec(torch.zeros_like(*args, **kwargs))


@pytest.fixture
def modes(monkeypatch):
    """Returns set(fwd_mode, token_block): selects the forward; the backward is set per run by _grads."""

    def set_modes(fwd_mode: str, token_block: int | None = None) -> None:
        monkeypatch.setitem(fn.CONFIG, "fwd_mode", fwd_mode)
        monkeypatch.setitem(fn.CONFIG, "fwd_token_block", token_block)

    return set_modes


def _grads(mode, q, k, v, idx, w, S, sink, do=None, monkeypatch=None):
    """Output and (dq, dk, dv, dw) with bwd_mode ``mode``; in "fused_atomic" the dQ reduce must not run
    and no (B,T,H,K,G,D) buffer may be allocated (the forwards used here need neither)."""
    B, T, HQ, D = q.shape
    H, K = k.shape[2], idx.shape[-1]
    spy = SpyTorch()
    with monkeypatch.context() as m:
        m.setitem(fn.CONFIG, "bwd_mode", mode)
        m.setattr(fn, "torch", spy)
        if mode == "fused_atomic":
            m.setattr(fn, "_hsa_bwd_dq_reduce_kernel", None)
        o, grads, do = _run(q, k, v, idx, w, S, sink, hsa_attention_triton, do=do)
    pair_buf = (B, T, H, K, HQ // H, D)
    if mode == "fused_atomic":
        assert pair_buf not in [s for s, _ in spy.allocs], spy.allocs
        if T and k.shape[1] and (idx >= 0).any():
            assert ((B, T, HQ, D), torch.float32) in spy.allocs  # the dq32 accumulator
    elif mode == "fused" and T and k.shape[1]:
        assert pair_buf in [s for s, _ in spy.allocs]  # the spy sees the buffer where it exists
    return o, grads, do


def _check(q, k, v, idx, w, S, sink, tol, monkeypatch):
    """fused_atomic vs the fp64 twin (tolerance) and vs fused (dk, dv, dw bitwise; dq to tolerance)."""
    o, grads, do = _grads("fused_atomic", q, k, v, idx, w, S, sink, monkeypatch=monkeypatch)
    base._assert_matches_naive(q, k, v, idx, w, S, sink, tol, o, grads, do)
    assert grads[0].dtype == q.dtype and grads[0].shape == q.shape
    fo, fgrads, _ = _grads("fused", q, k, v, idx, w, S, sink, do=do, monkeypatch=monkeypatch)
    assert torch.equal(o, fo)
    for name, g, f in zip("kvw", grads[1:], fgrads[1:]):
        assert torch.equal(g, f), name
    assert rel_err(grads[0], fgrads[0]) < tol
    return o, grads


@pytest.mark.triton
@pytest.mark.parametrize("fwd_mode,token_block", [("query", None), ("chunk_atomic", 8), ("chunk_atomic", None)])
@pytest.mark.parametrize(
    "B,T,HQ,H,D,S,K,sink,seg,empty_frac",
    [
        (1, 37, 16, 1, 16, 16, 3, False, 1024, 0.2),  # G=16, odd T
        (2, 41, 3, 1, 16, 16, 2, True, 4, 0.3),       # G=3 (padded rows), sink, B=2, segments of 4 pairs
        (1, 45, 2, 2, 32, 16, 4, False, 3, 0.0),      # G=1, two KV heads, segments of 3
        (1, 33, 4, 1, 24, 16, 2, True, 5, 0.2),       # D not a power of two
        (1, 40, 2, 1, 16, 24, 2, True, 1024, 0.1),    # S not a power of two
    ],
)
def test_fused_atomic_fp32(B, T, HQ, H, D, S, K, sink, seg, empty_frac, fwd_mode, token_block, modes,
                           monkeypatch):
    modes(fwd_mode, token_block)
    monkeypatch.setitem(fn.CONFIG, "bwd_kv_seg", seg)
    q, k, v, idx, w = _inputs(B, T, HQ, H, D, S, K, torch.float32, empty_frac=empty_frac)
    _check(q, k, v, idx, w, S, sink, 1e-5, monkeypatch)


@pytest.mark.triton
@pytest.mark.parametrize("fwd_mode", ["query", "chunk_atomic"])
@pytest.mark.parametrize("G,sink,seg", [(16, False, 4), (3, True, 1024), (1, False, 5)])
def test_fused_atomic_fp16(G, sink, seg, fwd_mode, modes, monkeypatch):
    modes(fwd_mode, 8)
    monkeypatch.setitem(fn.CONFIG, "bwd_kv_seg", seg)
    q, k, v, idx, w = _inputs(1, 35, G, 1, 32, 16, 2, torch.float16, empty_frac=0.1)
    _check(q, k, v, idx, w, 16, sink, 3e-3, monkeypatch)


@pytest.mark.triton
@pytest.mark.parametrize("fwd_mode", ["query", "chunk_atomic"])
def test_fused_atomic_all_empty_rows_and_one_chunk(fwd_mode, modes, monkeypatch):
    # C = 1: every valid slot is chunk 0, repeated across slots, so one atomic_add call carries several
    # contributions to the same dq32 row; whole rows of empty slots must get dq exactly 0.
    modes(fwd_mode, 8)
    monkeypatch.setitem(fn.CONFIG, "bwd_kv_seg", 4)
    S = 16
    q, k, v, idx, w = one_chunk_case(2, 37, 3, 1, 16, S, 3, device=DEV, every_slot_rows=True)
    for sink in (False, True):
        _, grads = _check(q, k, v, idx, w, S, sink, 1e-5, monkeypatch)
        assert torch.equal(grads[0][:, ::4], torch.zeros_like(grads[0][:, ::4]))


@pytest.mark.triton
@pytest.mark.parametrize("fwd_mode", ["query", "chunk_atomic"])
def test_fused_atomic_empty_selection(fwd_mode, modes, monkeypatch):
    modes(fwd_mode, 8)
    B, T, HQ, H, D, S, K = 1, 20, 4, 1, 16, 16, 3
    q, k, v, _, _ = _inputs(B, T, HQ, H, D, S, K, torch.float32, extra_chunks=2)
    idx = torch.full((B, T, H, K), -1, dtype=torch.int32, device=DEV)
    w = torch.rand(B, T, H, K, device=DEV)
    o, grads, _ = _grads("fused_atomic", q, k, v, idx, w, S, True, monkeypatch=monkeypatch)
    assert torch.equal(o, torch.zeros_like(o))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.triton
def test_fused_atomic_segments_split(modes, monkeypatch):
    # A chunk chosen by every token, split into segments of 4 pairs (T = 40 not a multiple of 4 per chunk).
    modes("query")
    monkeypatch.setitem(fn.CONFIG, "bwd_kv_seg", 4)
    q, k, v, _, _ = _inputs(1, 40, 4, 1, 16, 16, 2, torch.float32)
    idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
    idx[:, 16:, :, 0] = 0
    idx[:, 31:, :, 0] = 1
    idx[:, 31:, :, 1] = 0
    _check(q, k, v, idx, torch.rand(1, 40, 1, 2, device=DEV), 16, False, 1e-5, monkeypatch)


@pytest.mark.triton
def test_hsa_attention_bwd_direct_and_bad_mode(monkeypatch):
    # The launch-level entry point (what the benchmark's backward sweep calls) with a prebuilt index.
    q, k, v, idx, w = _inputs(1, 37, 3, 1, 16, 16, 3, torch.float32, empty_frac=0.2)
    do = torch.randn_like(q)
    _, lse = fn.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False)
    inv = fn.build_inverse_index(idx, k.shape[1] // 16, 1024)
    out = {}
    for mode in ("fused", "fused_atomic"):
        monkeypatch.setitem(fn.CONFIG, "bwd_mode", mode)
        out[mode] = fn.hsa_attention_bwd(do, q, k, v, idx, w, lse, 16, 0.25, inv=inv)
    a, f = out["fused_atomic"], out["fused"]
    assert rel_err(a[0], f[0]) < 1e-6 and all(torch.equal(x, y) for x, y in zip(a[1:], f[1:]))
    monkeypatch.setitem(fn.CONFIG, "bwd_mode", "fused-atomic")
    with pytest.raises(ValueError, match="bwd_mode"):
        fn.hsa_attention_bwd(do, q, k, v, idx, w, lse, 16, 0.25, inv=inv)


def test_default_bwd_mode_is_fused():
    assert fn.CONFIG["bwd_mode"] == "fused"


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("fwd_mode,HQ", [("query", 16), ("query", 3), ("chunk_atomic", 16)])
def test_fused_atomic_gpu_bf16(fwd_mode, HQ, monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "fwd_mode", fwd_mode)
    monkeypatch.setitem(fn.CONFIG, "bwd_mode", "fused_atomic")
    base.test_attention_gpu_bf16_vs_torch_bf16(1, 8192, HQ, 1, 64, 64, 8, False, monkeypatch)


@pytest.mark.gpu
def test_fused_atomic_gpu_peak_memory(monkeypatch):
    # fwd+bwd peak extra memory drops by about the per-pair buffer (B*T*H*K*G*D * 2 bytes in bf16).
    B, T, HQ, H, D, S, K = 1, 16384, 16, 1, 64, 64, 8
    q, k, v, idx, w = _inputs(B, T, HQ, H, D, S, K, torch.bfloat16, device="cuda")
    qg, kg, vg, wg = (x.detach().clone().requires_grad_() for x in (q, k, v, w))
    do = torch.randn_like(q)
    peak = {}
    for mode in ("fused", "fused_atomic"):
        monkeypatch.setitem(fn.CONFIG, "bwd_mode", mode)
        hsa_attention_triton(qg, kg, vg, idx, wg, chunk_size=S).backward(do)  # compile outside the measure
        for x in (qg, kg, vg, wg):
            x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        hsa_attention_triton(qg, kg, vg, idx, wg, chunk_size=S).backward(do)
        torch.cuda.synchronize()
        peak[mode] = torch.cuda.max_memory_allocated() - start
        for x in (qg, kg, vg, wg):
            x.grad = None
    pair_buf = B * T * H * K * (HQ // H) * D * 2
    assert peak["fused"] - peak["fused_atomic"] > 0.5 * pair_buf, peak
