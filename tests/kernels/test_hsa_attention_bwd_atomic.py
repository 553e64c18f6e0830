"""The fused backward with atomic dQ (``atomic_dq=True``) vs the fp64 naive twin and vs the default.

The fused chunk-outer kernel adds each pair's dQ contribution with fp32 atomics into a (B,T,HQ,D)
accumulator instead of writing it to the (B,T,H,K,G,D) per-pair buffer that a reduce kernel sums; dK, dV
and dW take the same path as by default (bitwise equal here). CPU: Triton interpreter; 16-bit inputs in
fp16 (bf16 tl.dot is wrong in the interpreter; bf16 runs under ``-m gpu``). dQ is not bitwise
deterministic on a GPU (atomic order): tolerances only.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.backward as bwd_mod
import hsa_kernels.hsa_attention.forward as fwd_mod
import pytest
import torch
from hsa_kernels.hsa_attention import AttentionLaunch, hsa_attention_triton

from .helpers import (
    DEV,
    Shape,
    SpyTorch,
    assert_matches_naive,
    attention_inputs,
    check_gpu_bf16_vs_torch_bf16,
    one_chunk_case,
    rel_err,
    run_attention,
)

pytestmark = pytest.mark.triton


def _grads(atomic_dq: bool, q, k, v, idx, w, S, sink, monkeypatch, do=None, seg: int = 1024):
    """Output and (dq, dk, dv, dw); with ``atomic_dq`` the dQ reduce must not run and no (B,T,H,K,G,D)
    buffer may be allocated."""
    B, T, HQ, D = q.shape
    H, K = k.shape[2], idx.shape[-1]
    spy = SpyTorch()
    with monkeypatch.context() as m:
        m.setattr(bwd_mod, "torch", spy)
        if atomic_dq:
            m.setattr(bwd_mod, "_hsa_bwd_dq_reduce_kernel", None)
        o, grads, do = run_attention(q, k, v, idx, w, S, sink, do=do, atomic_dq=atomic_dq,
                                     launch=AttentionLaunch(bwd_seg=seg))
    pair_buf = (B, T, H, K, HQ // H, D)
    if atomic_dq:
        assert pair_buf not in [s for s, _ in spy.allocs], spy.allocs
        if T and k.shape[1] and (idx >= 0).any():
            assert ((B, T, HQ, D), torch.float32) in spy.allocs  # the dq32 accumulator
    elif T and k.shape[1]:
        assert pair_buf in [s for s, _ in spy.allocs]  # the spy sees the buffer where it exists
    return o, grads, do


def _check(q, k, v, idx, w, S, sink, tol, monkeypatch, seg: int = 1024):
    """atomic dQ vs the fp64 twin (tolerance) and vs the default (dk, dv, dw bitwise; dq to tolerance)."""
    o, grads, do = _grads(True, q, k, v, idx, w, S, sink, monkeypatch, seg=seg)
    assert_matches_naive(q, k, v, idx, w, S, sink, tol, o, grads, do)
    assert grads[0].dtype == q.dtype and grads[0].shape == q.shape
    fo, fgrads, _ = _grads(False, q, k, v, idx, w, S, sink, monkeypatch, do=do, seg=seg)
    assert torch.equal(o, fo)
    for name, g, f in zip("kvw", grads[1:], fgrads[1:]):
        assert torch.equal(g, f), name
    assert rel_err(grads[0], fgrads[0]) < tol
    return o, grads


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "seg", "empty_frac"), [
    pytest.param(Shape(B=1, T=37, HQ=16, H=1, D=16, S=16, K=3), 1024, 0.2, id="G16-oddT"),
    pytest.param(Shape(B=2, T=41, HQ=3, H=1, D=16, S=16, K=2, sink=True), 4, 0.3, id="G3-sink-B2-seg4"),
    pytest.param(Shape(B=1, T=45, HQ=2, H=2, D=32, S=16, K=4), 3, 0.0, id="G1-two-kv-heads-seg3"),
    pytest.param(Shape(B=1, T=33, HQ=4, H=1, D=24, S=16, K=2, sink=True), 5, 0.2, id="D24-not-pow2-seg5"),
    pytest.param(Shape(B=1, T=40, HQ=2, H=1, D=16, S=24, K=2, sink=True), 1024, 0.1, id="S24-not-pow2"),
])
def test_atomic_dq_fp32(shape: Shape, seg: int, empty_frac: float, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, idx, w = attention_inputs(shape, torch.float32, empty_frac=empty_frac)
    _check(q, k, v, idx, w, shape.S, shape.sink, 1e-5, monkeypatch, seg=seg)


@pytest.mark.parametrize(("G", "sink", "seg"), [pytest.param(16, False, 4, id="G16-seg4"),
                                                pytest.param(3, True, 1024, id="G3-sink"),
                                                pytest.param(1, False, 5, id="G1-seg5")])
def test_atomic_dq_fp16(G: int, sink: bool, seg: int, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, idx, w = attention_inputs(Shape(B=1, T=35, HQ=G, H=1, D=32, S=16, K=2), torch.float16, empty_frac=0.1)
    _check(q, k, v, idx, w, 16, sink, 3e-3, monkeypatch, seg=seg)


@pytest.mark.slow
def test_atomic_dq_all_empty_rows_and_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # C = 1: every valid slot is chunk 0, repeated across slots, so one atomic_add call carries several
    # contributions to the same dq32 row; whole rows of empty slots must get dq exactly 0.
    q, k, v, idx, w = one_chunk_case(B=2, T=37, HQ=3, H=1, D=16, S=16, K=3, every_slot_rows=True)
    for sink in (False, True):
        _, grads = _check(q, k, v, idx, w, 16, sink, 1e-5, monkeypatch, seg=4)
        assert torch.equal(grads[0][:, ::4], torch.zeros_like(grads[0][:, ::4]))


def test_atomic_dq_empty_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, _, _ = attention_inputs(Shape(B=1, T=20, HQ=4, H=1, D=16, S=16, K=3), torch.float32, extra_chunks=2)
    idx = torch.full((1, 20, 1, 3), -1, dtype=torch.int32, device=DEV)
    w = torch.rand(1, 20, 1, 3, device=DEV)
    o, grads, _ = _grads(True, q, k, v, idx, w, 16, True, monkeypatch)
    assert torch.equal(o, torch.zeros_like(o))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_atomic_dq_segments_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chunk chosen by every token, split into segments of 4 pairs (T = 40 not a multiple of 4 per chunk).
    q, k, v, _, _ = attention_inputs(Shape(B=1, T=40, HQ=4, H=1, D=16, S=16, K=2), torch.float32)
    idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
    idx[:, 16:, :, 0] = 0
    idx[:, 31:, :, 0] = 1
    idx[:, 31:, :, 1] = 0
    _check(q, k, v, idx, torch.rand(1, 40, 1, 2, device=DEV), 16, False, 1e-5, monkeypatch, seg=4)


def test_hsa_attention_bwd_direct() -> None:
    # The launch-level entry point (what the benchmark times for the backward alone).
    q, k, v, idx, w = attention_inputs(Shape(B=1, T=37, HQ=3, H=1, D=16, S=16, K=3), torch.float32, empty_frac=0.2)
    do = torch.randn_like(q)
    _, lse = fwd_mod.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False, schedule="query")
    a = bwd_mod.hsa_attention_bwd(do, q, k, v, idx, w, lse, 16, 0.25, atomic_dq=True)
    f = bwd_mod.hsa_attention_bwd(do, q, k, v, idx, w, lse, 16, 0.25)
    assert rel_err(a[0], f[0]) < 1e-6 and all(torch.equal(x, y) for x, y in zip(a[1:], f[1:]))


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("HQ", [16, 3])
def test_atomic_dq_gpu_bf16(HQ: int) -> None:
    check_gpu_bf16_vs_torch_bf16(Shape(B=1, T=8192, HQ=HQ, H=1, D=64, S=64, K=8), atomic_dq=True)


@pytest.mark.gpu
def test_atomic_dq_gpu_peak_memory() -> None:
    # fwd+bwd peak extra memory drops by about the per-pair buffer (B*T*H*K*G*D * 2 bytes in bf16).
    shape = Shape(B=1, T=16384, HQ=16, H=1, D=64, S=64, K=8)
    q, k, v, idx, w = attention_inputs(shape, torch.bfloat16, device="cuda")
    qg, kg, vg, wg = (x.detach().clone().requires_grad_() for x in (q, k, v, w))
    do = torch.randn_like(q)
    peak = {}
    for atomic_dq in (False, True):
        for measure in (False, True):  # the first call compiles outside the measurement
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            hsa_attention_triton(qg, kg, vg, idx, wg, chunk_size=64, atomic_dq=atomic_dq).backward(do)
            torch.cuda.synchronize()
            if measure:
                peak[atomic_dq] = torch.cuda.max_memory_allocated() - start
            for x in (qg, kg, vg, wg):
                x.grad = None
    pair_buf = 1 * 16384 * 1 * 8 * 16 * 64 * 2
    assert peak[False] - peak[True] > 0.5 * pair_buf, peak
