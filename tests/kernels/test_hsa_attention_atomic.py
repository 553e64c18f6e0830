"""The atomic chunk-outer forward (``CONFIG["fwd_mode"] = "chunk_atomic"``) vs the fp64 naive twin.

Forward through the atomic kernel over a token-blocked inverse index (``CONFIG["fwd_token_block"]``),
backward through the normal (fused / split) backward, which must build its own plain index. CPU: Triton
interpreter; 16-bit inputs in fp16 (bf16 tl.dot is wrong in the interpreter; bf16 runs under ``-m gpu``).
The forward is not bitwise deterministic on a GPU (atomic order), so only tolerances are checked.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.function as fn
import pytest
import torch
from hsa_kernels.hsa_attention import hsa_attention_naive, hsa_attention_triton

from . import test_hsa_attention as base
from .helpers import PoisonTorch, one_chunk_case, rel_err

DEV = base.DEV
_check, _check_idx, _inputs, _run = base._check, base._check_idx, base._inputs, base._run


@pytest.fixture
def atomic(monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "fwd_mode", "chunk_atomic")
    monkeypatch.setattr(fn, "_hsa_fwd_kernel", None)  # the query-outer forward must not run

    def set_block(token_block):
        monkeypatch.setitem(fn.CONFIG, "fwd_token_block", token_block)

    return set_block


@pytest.mark.triton
@pytest.mark.parametrize(
    "B,T,HQ,H,D,S,K,sink,token_block,empty_frac",
    [
        (1, 37, 16, 1, 16, 16, 3, False, 8, 0.2),   # G=16, odd T, blocks of 8 (37 = 4*8 + 5)
        (2, 41, 3, 1, 16, 16, 2, True, 8, 0.3),     # G=3 (padded rows), sink, B=2
        (1, 45, 2, 2, 32, 16, 4, False, 16, 0.0),   # G=1, two KV heads
        (1, 33, 4, 1, 24, 16, 2, True, 5, 0.2),     # D not a power of two, blocks of 5
        (1, 40, 2, 1, 16, 24, 2, True, 7, 0.1),     # S not a power of two
        (1, 37, 3, 1, 16, 16, 3, True, None, 0.2),  # no token blocking: plain (b, h, c) index
        (1, 37, 16, 1, 16, 16, 3, False, 64, 0.2),  # one block (token_block >= T)
    ],
)
def test_atomic_fp32(B, T, HQ, H, D, S, K, sink, token_block, empty_frac, atomic, monkeypatch):
    atomic(token_block)
    monkeypatch.setattr(fn, "torch", PoisonTorch())  # unwritten LSE / outputs would come back as NaN
    _check(B, T, HQ, H, D, S, K, torch.float32, sink, 1e-5, empty_frac=empty_frac)


@pytest.mark.triton
@pytest.mark.parametrize("G,sink", [(16, False), (3, True), (1, False)])
def test_atomic_fp16(G, sink, atomic):
    atomic(8)
    _check(1, 35, G, 1, 32, 16, 2, torch.float16, sink, 3e-3, empty_frac=0.1)


@pytest.mark.triton
@pytest.mark.parametrize("bwd_mode", ["fused", "split"])
def test_atomic_all_empty_rows_and_one_chunk(bwd_mode, atomic, monkeypatch):
    # C = 1 (every valid slot is chunk 0, repeated across slots: same o32 rows in one atomic block) and
    # whole rows of empty slots, whose output must be exactly 0.
    atomic(8)
    monkeypatch.setitem(fn.CONFIG, "bwd_mode", bwd_mode)
    S = 16
    q, k, v, idx, w = one_chunk_case(2, 37, 3, 1, 16, S, 3, device=DEV)
    for sink in (False, True):
        o, _ = _check_idx(q, k, v, idx, w, S, sink, 1e-5)
        assert torch.equal(o[:, ::4], torch.zeros_like(o[:, ::4]))


@pytest.mark.triton
def test_atomic_empty_selection(atomic):
    atomic(8)
    B, T, HQ, H, D, S, K = 1, 20, 4, 1, 16, 16, 3
    q, k, v, _, _ = _inputs(B, T, HQ, H, D, S, K, torch.float32, extra_chunks=2)
    idx = torch.full((B, T, H, K), -1, dtype=torch.int32, device=DEV)
    w = torch.rand(B, T, H, K, device=DEV)
    o, grads, _ = _run(q, k, v, idx, w, S, True, hsa_attention_triton)
    assert torch.equal(o, torch.zeros_like(o))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.triton
def test_atomic_segments_split(atomic, monkeypatch):
    # A chunk chosen by every token, segments of 4 pairs inside blocks of 8 tokens (and T = 40 not a
    # multiple of the segment size within the last block).
    atomic(8)
    monkeypatch.setitem(fn.CONFIG, "bwd_kv_seg", 4)
    q, k, v, _, _ = _inputs(1, 40, 4, 1, 16, 16, 2, torch.float32)
    idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
    idx[:, 16:, :, 0] = 0
    idx[:, 32:, :, 0] = 1
    idx[:, 32:, :, 1] = 0
    _check_idx(q, k, v, idx, torch.rand(1, 40, 1, 2, device=DEV), 16, False, 1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("T,token_block,shared", [(37, 8, False), (37, 37, True), (37, None, True)])
def test_backward_gets_plain_index(T, token_block, shared, atomic, monkeypatch):
    # The backward kernels assume (b, h, c) groups: a token-blocked index must never reach them.
    atomic(token_block)
    seen = []
    bwd = fn.hsa_attention_bwd

    def spy(*args, inv=None, **kw):
        seen.append(inv)
        return bwd(*args, inv=inv, **kw)

    monkeypatch.setattr(fn, "hsa_attention_bwd", spy)
    q, k, v, idx, w = _inputs(1, T, 4, 1, 16, 16, 3, torch.float32)
    _run(q, k, v, idx, w, 16, False, hsa_attention_triton)
    assert len(seen) == 1 and (seen[0] is not None) == shared
    if shared:
        C = k.shape[1] // 16
        assert seen[0]["seg_first"].numel() == C  # B = H = 1: one group per chunk


@pytest.mark.triton
def test_chunk_mode_rejects_blocked_index():
    q, k, v, idx, w = _inputs(1, 37, 4, 1, 16, 16, 3, torch.float32)
    inv = fn.build_inverse_index(idx, k.shape[1] // 16, 1024, token_block=8)
    with pytest.raises(ValueError, match="token_block"):
        fn.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False, inv=inv, mode="chunk")
    o, _ = fn.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False, inv=inv, mode="chunk_atomic")
    ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=16, scale=0.25)
    assert rel_err(o, ref) < 1e-5


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("HQ,token_block", [(16, 4096), (16, 1000), (3, None)])
def test_atomic_gpu_bf16(HQ, token_block, atomic, monkeypatch):
    atomic(token_block)
    base.test_attention_gpu_bf16_vs_torch_bf16(1, 8192, HQ, 1, 64, 64, 8, False, monkeypatch)
