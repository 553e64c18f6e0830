"""HSA attention kernels vs the fp64 naive twin: forward and backward.

CPU: Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) at tiny shapes, fp32/fp16 only (bf16
tl.dot is wrong in the interpreter). GPU (``-m gpu``): real shapes in bf16, plus the error bar against
plain PyTorch in bf16.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.function as fn
import pytest
import torch
from hsa_kernels.hsa_attention import hsa_attention_naive, hsa_attention_triton

from .helpers import PoisonTorch, random_selection, rel_err

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, T, HQ, H, D, S, K, dtype, extra_chunks=1, empty_frac=0.0, q_scale=1.0, device=DEV):
    C = T // S + extra_chunks
    q = (torch.randn(B, T, HQ, D, device=device) * q_scale).to(dtype)
    k = torch.randn(B, C * S, H, D, device=device).to(dtype)
    v = torch.randn(B, C * S, H, D, device=device).to(dtype)
    idx, w = random_selection(B, T, H, K, S, device=device, empty_frac=empty_frac)
    return q, k, v, idx, w


def _run(q, k, v, idx, w, S, sink, fn_attn, dtype=None, do=None):
    xs = [(x if dtype is None else x.to(dtype)).detach().clone().requires_grad_() for x in (q, k, v, w)]
    o = fn_attn(xs[0], xs[1], xs[2], idx, xs[3], chunk_size=S, sink=sink)
    if do is None:
        do = torch.randn_like(o, dtype=torch.float32)
    o.backward(do.to(o.dtype))
    return o, [x.grad for x in xs], do


def _assert_matches_naive(q, k, v, idx, w, S, sink, tol, o, grads, do) -> None:
    """``o`` and ``grads`` (dq, dk, dv, dw of a Triton run with upstream ``do``) within ``tol`` of the fp64 twin."""
    ro, rgrads, _ = _run(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.float64, do=do.double())
    errs = {"o": rel_err(o, ro)} | {n: rel_err(g, r) for n, g, r in zip("qkvw", grads, rgrads)}
    assert all(e < tol for e in errs.values()), errs


def _check_idx(q, k, v, idx, w, S, sink, tol):
    """The Triton op on given inputs against the fp64 twin, forward and backward."""
    o, grads, do = _run(q, k, v, idx, w, S, sink, hsa_attention_triton)
    _assert_matches_naive(q, k, v, idx, w, S, sink, tol, o, grads, do)
    return o, grads


def _check(B, T, HQ, H, D, S, K, dtype, sink, tol, **kw):
    q, k, v, idx, w = _inputs(B, T, HQ, H, D, S, K, dtype, **kw)
    o, grads = _check_idx(q, k, v, idx, w, S, sink, tol)
    assert o.dtype == dtype and o.shape == (B, T, HQ, D)
    return o, grads


@pytest.mark.triton
@pytest.mark.parametrize(
    "B,T,HQ,H,D,S,K,sink",
    [
        (1, 37, 16, 1, 32, 16, 3, False),  # G=16, T not a multiple of anything
        (2, 41, 3, 1, 16, 16, 2, True),    # G=3 (padded rows), sink
        (1, 45, 2, 2, 32, 16, 4, False),   # G=1, two KV heads
        (1, 33, 4, 1, 24, 16, 2, False),   # D not a power of two
        (1, 40, 2, 1, 16, 24, 2, True),    # S not a power of two
    ],
)
def test_attention_fp32(B, T, HQ, H, D, S, K, sink, monkeypatch):
    monkeypatch.setattr(fn, "torch", PoisonTorch())  # unwritten outputs would come back as NaN
    _check(B, T, HQ, H, D, S, K, torch.float32, sink, 1e-5)


@pytest.mark.triton
def test_attention_fp16():
    _check(1, 34, 4, 1, 32, 16, 3, torch.float16, False, 3e-3)


@pytest.mark.triton
def test_attention_extreme_logits():
    # Logits of +-1e3: one key takes the whole chunk; max subtraction must keep this finite.
    _check(1, 36, 4, 1, 16, 16, 2, torch.float32, True, 1e-4, q_scale=300.0)


@pytest.mark.triton
def test_attention_empty_selection(monkeypatch):
    monkeypatch.setattr(fn, "torch", PoisonTorch())
    B, T, HQ, H, D, S, K = 1, 20, 4, 1, 16, 16, 3
    q, k, v, _, _ = _inputs(B, T, HQ, H, D, S, K, torch.float32, extra_chunks=2)
    idx = torch.full((B, T, H, K), -1, dtype=torch.int32, device=DEV)
    w = torch.rand(B, T, H, K, device=DEV)  # weights of empty slots must be ignored
    o, grads, _ = _run(q, k, v, idx, w, S, False, hsa_attention_triton)
    assert torch.equal(o, torch.zeros_like(o))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.triton
def test_attention_partly_empty_and_deterministic():
    q, k, v, idx, w = _inputs(1, 48, 4, 1, 16, 16, 3, torch.float32, empty_frac=0.4)
    a = _run(q, k, v, idx, w, 16, False, hsa_attention_triton)
    b = _run(q, k, v, idx, w, 16, False, hsa_attention_triton, do=a[2])
    assert torch.equal(a[0], b[0])
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    _check(1, 48, 4, 1, 16, 16, 3, torch.float32, False, 1e-5, empty_frac=0.4)


@pytest.mark.triton
def test_inverse_index_segments():
    # A chunk chosen by every token must be split over several segments (and summed back in order).
    old = fn.CONFIG["bwd_kv_seg"]
    fn.CONFIG["bwd_kv_seg"] = 4
    try:
        q, k, v, _, _ = _inputs(1, 40, 4, 1, 16, 16, 2, torch.float32)
        idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
        idx[:, 16:, :, 0] = 0
        idx[:, 32:, :, 0] = 1
        idx[:, 32:, :, 1] = 0
        w = torch.rand(1, 40, 1, 2, device=DEV)
        o, grads, do = _run(q, k, v, idx, w, 16, False, hsa_attention_triton)
        ro, rgrads, _ = _run(q, k, v, idx, w, 16, False, hsa_attention_naive, dtype=torch.float64, do=do.double())
        assert rel_err(o, ro) < 1e-5
        assert all(rel_err(g, r) < 1e-5 for g, r in zip(grads, rgrads))
    finally:
        fn.CONFIG["bwd_kv_seg"] = old


@pytest.mark.triton
def test_dispatch_forced_triton(monkeypatch):
    from hsa_core import ops
    from hsa_core.ops import dispatch

    monkeypatch.setenv("HSA_BACKEND", "triton")
    dispatch._load_triton.cache_clear()
    q, k, v, idx, w = _inputs(1, 20, 4, 1, 16, 16, 2, torch.float32)
    o = ops.hsa_attention(q, k, v, idx, w, chunk_size=16)
    torch.testing.assert_close(o, hsa_attention_naive(q, k, v, idx, w, chunk_size=16), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize(
    "B,T,HQ,H,D,S,K,sink",
    [
        (2, 4096, 16, 1, 64, 64, 8, False),
        (1, 3001, 16, 2, 128, 64, 8, True),
        (1, 2053, 1, 1, 64, 32, 4, False),
        (1, 4099, 3, 1, 32, 128, 8, False),
        (1, 2048, 32, 2, 64, 64, 16, False),
    ],
)
def test_attention_gpu_bf16_vs_torch_bf16(B, T, HQ, H, D, S, K, sink, monkeypatch):
    """Error against the fp32 reference within 2x that of plain PyTorch in bf16 (the issue's bar)."""
    monkeypatch.setattr(fn, "torch", PoisonTorch())
    q, k, v, idx, w = _inputs(B, T, HQ, H, D, S, K, torch.float32, empty_frac=0.05)
    o, grads, do = _run(q, k, v, idx, w, S, sink, hsa_attention_triton, dtype=torch.bfloat16)
    ro, rgrads, _ = _run(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.float32, do=do)
    bo, bgrads, _ = _run(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.bfloat16, do=do)
    for name, x, r, base in zip("oqkvw", [o, *grads], [ro, *rgrads], [bo, *bgrads]):
        e, eb = rel_err(x, r), rel_err(base, r)
        assert e <= 2 * eb + 1e-6, (name, e, eb)


@pytest.mark.gpu
def test_attention_gpu_fp32_exact():
    _check(1, 2048, 16, 1, 64, 64, 8, torch.float32, False, 1e-4, device="cuda")


@pytest.mark.triton
@pytest.mark.parametrize("G", [16, 3])
def test_attention_split_backward(G, monkeypatch):
    # The query-side + chunk-side ("split") schedule must agree with the fused chunk-outer one.
    monkeypatch.setitem(fn.CONFIG, "bwd_mode", "split")
    _check(1, 39, G, 1, 16, 16, 3, torch.float32, G == 3, 1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("G,pair_dtype", [(16, "input"), (3, "fp32"), (1, "input")])
def test_attention_chunk_outer_forward(G, pair_dtype, monkeypatch):
    # Chunk-outer forward (inverse index shared with the backward) against the naive twin.
    monkeypatch.setitem(fn.CONFIG, "fwd_mode", "chunk")
    monkeypatch.setitem(fn.CONFIG, "pair_dtype", pair_dtype)
    _check(1, 43, G, 1, 16, 16, 3, torch.float32, G == 3, 1e-5, empty_frac=0.2)
    _check(1, 35, G, 1, 32, 16, 2, torch.float16, False, 3e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("fwd_mode,bwd_mode", [("chunk", "fused"), ("query", "split")])
@pytest.mark.parametrize("HQ", [16, 3])
def test_attention_gpu_schedules(fwd_mode, bwd_mode, HQ, monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "fwd_mode", fwd_mode)
    monkeypatch.setitem(fn.CONFIG, "bwd_mode", bwd_mode)
    test_attention_gpu_bf16_vs_torch_bf16(1, 4096, HQ, 1, 64, 64, 8, False, monkeypatch)


@pytest.mark.gpu
def test_dispatch_uses_kernels_on_cuda(monkeypatch):
    from hsa_core import ops

    monkeypatch.delenv("HSA_BACKEND", raising=False)
    for op in ("hsa_attention", "hsa_select", "hsa_decode"):
        assert ops.backend_for(op, "cuda") == "triton", op
    q, k, v, idx, w = _inputs(1, 1024, 16, 1, 64, 64, 8, torch.bfloat16, device="cuda")
    o = ops.hsa_attention(q, k, v, idx, w, chunk_size=64)
    assert rel_err(o, hsa_attention_naive(q.float(), k.float(), v.float(), idx, w, chunk_size=64)) < 1e-2


@pytest.mark.triton
def test_attention_tma_forward(monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "use_tma", True)
    _check(2, 37, 16, 2, 32, 16, 3, torch.float32, True, 1e-5, empty_frac=0.2)


@pytest.mark.gpu
@pytest.mark.parametrize("HQ,S", [(16, 64), (3, 48)])
def test_attention_gpu_tma(HQ, S, monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "use_tma", True)
    test_attention_gpu_bf16_vs_torch_bf16(2, 3000, HQ, 1, 64, S, 8, False, monkeypatch)
