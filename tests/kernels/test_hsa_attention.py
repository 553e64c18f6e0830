"""HSA attention kernels (``function.py``, query-outer forward, fused backward) vs the fp64 naive twin.

CPU: Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) at tiny shapes, fp32/fp16 only (bf16
tl.dot is wrong in the interpreter). GPU (``-m gpu``): real shapes in bf16, plus the error bar against
plain PyTorch in bf16. The token-block and automatic forwards: ``test_hsa_attention_block.py``; the
atomic-dQ backward: ``test_hsa_attention_bwd_atomic.py``.
"""

from __future__ import annotations

import dataclasses

import hsa_kernels.hsa_attention.backward as bwd_mod
import hsa_kernels.hsa_attention.forward as fwd_mod
import pytest
import torch
from hsa_kernels.hsa_attention import AttentionLaunch, hsa_attention_naive, hsa_attention_triton

from .helpers import (
    DEV,
    SMALL_SHAPES,
    PoisonTorch,
    Shape,
    attention_inputs,
    check_attention,
    check_gpu_bf16_vs_torch_bf16,
    rel_err,
    run_attention,
)

pytestmark = pytest.mark.triton

SHAPES = [pytest.param(shape, id=name) for name, shape in SMALL_SHAPES.items()]
SMALL = Shape(B=1, T=36, HQ=4, H=1, D=16, S=16, K=2, sink=True)


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh buffers of both launchers come back as NaN / -7: an unwritten output or LSE shows up."""
    monkeypatch.setattr(fwd_mod, "torch", PoisonTorch())
    monkeypatch.setattr(bwd_mod, "torch", PoisonTorch())


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_query_outer_fp32(shape: Shape, poisoned: None) -> None:
    check_attention(shape, torch.float32, 1e-5, empty_frac=0.2, schedule="query")


def test_query_outer_fp16() -> None:
    check_attention(Shape(B=1, T=34, HQ=4, H=1, D=32, S=16, K=3), torch.float16, 3e-3, schedule="query")


def test_extreme_logits() -> None:
    # Logits of +-1e3: one key takes the whole chunk; max subtraction must keep this finite. fp32 logits
    # of that size carry absolute rounding errors of ~1e-4, which the gradients through exp inherit
    # (measured: dq 2.8e-4, dk 2.5e-4 relative, same before the kernels were restructured).
    check_attention(SMALL, torch.float32, 1e-3, q_scale=300.0, schedule="query")


def test_empty_selection(poisoned: None) -> None:
    shape = Shape(B=1, T=20, HQ=4, H=1, D=16, S=16, K=3)
    q, k, v, _, _ = attention_inputs(shape, torch.float32, extra_chunks=2)
    idx = torch.full((1, 20, 1, 3), -1, dtype=torch.int32, device=DEV)
    w = torch.rand(1, 20, 1, 3, device=DEV)  # weights of empty slots must be ignored
    for schedule in ("query", "block"):
        o, grads, _ = run_attention(q, k, v, idx, w, shape.S, False, schedule=schedule)
        assert torch.equal(o, torch.zeros_like(o))
        for g in grads:
            assert torch.equal(g, torch.zeros_like(g))


def test_partly_empty_and_deterministic() -> None:
    shape = Shape(B=1, T=48, HQ=4, H=1, D=16, S=16, K=3)
    q, k, v, idx, w = attention_inputs(shape, torch.float32, empty_frac=0.4)
    a = run_attention(q, k, v, idx, w, 16, False)
    b = run_attention(q, k, v, idx, w, 16, False, do=a[2])
    assert torch.equal(a[0], b[0])
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_inverse_index_segments() -> None:
    # A chunk chosen by every token must be split over several segments (and summed back in order).
    shape = Shape(B=1, T=40, HQ=4, H=1, D=16, S=16, K=2)
    q, k, v, _, _ = attention_inputs(shape, torch.float32)
    idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
    idx[:, 16:, :, 0] = 0
    idx[:, 32:, :, 0] = 1
    idx[:, 32:, :, 1] = 0
    w = torch.rand(1, 40, 1, 2, device=DEV)
    o, grads, do = run_attention(q, k, v, idx, w, 16, False, launch=AttentionLaunch(bwd_seg=4))
    ro, rgrads, _ = run_attention(q, k, v, idx, w, 16, False, hsa_attention_naive, dtype=torch.float64,
                                  do=do.double())
    assert rel_err(o, ro) < 1e-5
    assert all(rel_err(g, r) < 1e-5 for g, r in zip(grads, rgrads))


@pytest.mark.parametrize("bad", [pytest.param(dict(schedule="chunk"), id="old-chunk-schedule"),
                                 pytest.param(dict(schedule="Query"), id="case-matters"),
                                 pytest.param(dict(schedule="auto"), id="deleted-auto-schedule")])
def test_unknown_schedule_is_a_value_error(bad: dict) -> None:
    q, k, v, idx, w = attention_inputs(SMALL, torch.float32)
    with pytest.raises(ValueError, match=r"schedule must be one of 'query', 'block', got '"):
        hsa_attention_triton(q, k, v, idx, w, chunk_size=16, **bad)


@pytest.mark.parametrize(("field", "value"), [("bwd_seg", 0), ("fwd_warps", 0), ("block_rows", 0),
                                              ("block_share_max", -1), ("fwd_stages", 2.0)])
def test_launch_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"AttentionLaunch.{field} must be"):
        AttentionLaunch(**{field: value})
    with pytest.raises(dataclasses.FrozenInstanceError):
        AttentionLaunch().bwd_seg = 4  # type: ignore[misc]


def test_dispatch_forced_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsa_core import ops

    monkeypatch.setenv("HSA_BACKEND", "triton")
    q, k, v, idx, w = attention_inputs(Shape(B=1, T=20, HQ=4, H=1, D=16, S=16, K=2), torch.float32)
    o = ops.hsa_attention(q, k, v, idx, w, chunk_size=16)
    torch.testing.assert_close(o, hsa_attention_naive(q, k, v, idx, w, chunk_size=16), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [
    pytest.param(Shape(B=2, T=4096, HQ=16, H=1, D=64, S=64, K=8), id="bench-shape"),
    pytest.param(Shape(B=1, T=3001, HQ=16, H=2, D=128, S=64, K=8, sink=True), id="D128-sink"),
    pytest.param(Shape(B=1, T=2053, HQ=1, H=1, D=64, S=32, K=4), id="G1"),
    pytest.param(Shape(B=1, T=4099, HQ=3, H=1, D=32, S=128, K=8), id="G3-S128"),
    pytest.param(Shape(B=1, T=2048, HQ=32, H=2, D=64, S=64, K=16), id="G16-K16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["query", "block"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_bf16_vs_torch_bf16(shape: Shape, schedule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error against the fp32 reference within 2x that of plain PyTorch in bf16 (the kernel bar)."""
    monkeypatch.setattr(fwd_mod, "torch", PoisonTorch())
    monkeypatch.setattr(bwd_mod, "torch", PoisonTorch())
    check_gpu_bf16_vs_torch_bf16(shape, schedule=schedule)


@pytest.mark.gpu
def test_gpu_fp32_exact() -> None:
    check_attention(Shape(B=1, T=2048, HQ=16, H=1, D=64, S=64, K=8), torch.float32, 1e-4, device="cuda")


@pytest.mark.gpu
def test_dispatch_uses_kernels_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsa_core import ops

    monkeypatch.delenv("HSA_BACKEND", raising=False)
    for op in ops.KERNEL_OPS:
        assert ops.backend_for(op, "cuda") == "triton", op
    q, k, v, idx, w = attention_inputs(Shape(B=1, T=1024, HQ=16, H=1, D=64, S=64, K=8), torch.bfloat16,
                                       device="cuda")
    o = ops.hsa_attention(q, k, v, idx, w, chunk_size=64)
    assert rel_err(o, hsa_attention_naive(q.float(), k.float(), v.float(), idx, w, chunk_size=64)) < 1e-2
