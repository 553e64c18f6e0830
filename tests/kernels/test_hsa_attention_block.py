"""The token-block forward (``CONFIG["fwd_mode"] = "block"``) vs the fp64 naive twin.

Blocks of consecutive tokens that chose few distinct chunks go to ``_hsa_fwd_block_kernel`` (each
distinct K/V tile loaded once for all the block's rows), the other tokens to the query-outer kernel,
which skips the shared blocks. ``fwd_block_share_max`` forces either (0: no block is shared, except
all-empty ones; a large value: every block is). CPU: Triton
interpreter; 16-bit inputs in fp16 (bf16 tl.dot is wrong in the interpreter; bf16 runs under ``-m gpu``).
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.function as fn
import pytest
import torch
from hsa_kernels.hsa_attention import hsa_attention_naive

from . import test_hsa_attention as base
from .helpers import PoisonTorch, one_chunk_case, rel_err

DEV = base.DEV
_check, _check_idx, _inputs = base._check, base._check_idx, base._inputs
ALWAYS, NEVER = 1 << 20, 0


@pytest.fixture
def block(monkeypatch):
    monkeypatch.setitem(fn.CONFIG, "fwd_mode", "block")
    monkeypatch.setitem(fn.CONFIG, "use_tma", True)  # ignored in "block" mode (the TMA kernel skips nothing)

    def set_share(share_max: int, rows: int = 64) -> None:
        monkeypatch.setitem(fn.CONFIG, "fwd_block_share_max", share_max)
        monkeypatch.setitem(fn.CONFIG, "fwd_block_rows", rows)

    return set_share


def shared_selection(B, T, H, K, S, block_tokens, device=DEV, empty_frac=0.0):
    """One causal random selection per block of ``block_tokens`` tokens, visible to all of them (drawn
    for the block's first token), with per-token random weights: the case the shared path is for."""
    idx, _ = base.random_selection(B, T, H, K, S, device=device, empty_frac=empty_frac)
    first = (torch.arange(T, device=device) // block_tokens) * block_tokens
    idx = idx[:, first].contiguous()
    w = torch.rand(idx.shape, device=device) * (idx >= 0)
    return idx, w


@pytest.mark.triton
@pytest.mark.parametrize("share", [ALWAYS, NEVER, 16])
@pytest.mark.parametrize(
    "B,T,HQ,H,D,S,K,sink",
    [
        (1, 37, 16, 1, 32, 16, 3, False),  # G=16: 4 tokens per block, T not a multiple of 4
        (2, 41, 3, 1, 16, 16, 2, True),    # G=3 (rows padded to 16), sink, B=2
        (1, 45, 2, 2, 32, 16, 4, False),   # G=1, two KV heads
        (1, 33, 4, 1, 24, 16, 3, False),   # D not a power of two, K not a power of two
        (1, 40, 2, 1, 16, 24, 2, True),    # S not a power of two
    ],
)
def test_block_fp32(B, T, HQ, H, D, S, K, sink, share, block, monkeypatch):
    block(share)
    monkeypatch.setattr(fn, "torch", PoisonTorch())  # unwritten outputs / LSE would come back as NaN
    _check(B, T, HQ, H, D, S, K, torch.float32, sink, 1e-5, empty_frac=0.2)


@pytest.mark.triton
@pytest.mark.parametrize("share", [ALWAYS, NEVER, 8])
@pytest.mark.parametrize("HQ,rows", [(16, 64), (4, 32)])
def test_block_shared_selection(share, HQ, rows, block, monkeypatch):
    # Tokens of a block chose the same chunks (with duplicates across blocks of other sizes too).
    block(share, rows)
    monkeypatch.setattr(fn, "torch", PoisonTorch())
    B, T, H, D, S, K = 1, 45, 1, 16, 16, 3
    q, k, v, _, _ = _inputs(B, T, HQ, H, D, S, K, torch.float32)
    for bt in (4, 3):
        idx, w = shared_selection(B, T, H, K, S, bt, empty_frac=0.1)
        _check_idx(q, k, v, idx, w, S, True, 1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("share", [ALWAYS, NEVER])
def test_block_fp16(share, block):
    block(share)
    _check(1, 35, 16, 1, 32, 16, 3, torch.float16, False, 3e-3, empty_frac=0.1)


@pytest.mark.triton
@pytest.mark.parametrize("share", [ALWAYS, NEVER])
def test_block_one_chunk_repeated_slots(share, block):
    # C = 1, chunk 0 repeated across the slots of a row (a chunk a token counts twice), whole empty rows.
    block(share)
    S = 16
    q, k, v, idx, w = one_chunk_case(2, 37, 3, 1, 16, S, 3, device=DEV, every_slot_rows=True)
    for sink in (False, True):
        o, _ = _check_idx(q, k, v, idx, w, S, sink, 1e-5)
        assert torch.equal(o[:, ::4], torch.zeros_like(o[:, ::4]))


@pytest.mark.triton
def test_block_paths_agree_and_are_deterministic(block):
    q, k, v, idx, w = _inputs(1, 45, 16, 1, 16, 16, 3, torch.float32, empty_frac=0.2)
    idx = idx.contiguous()
    outs = {}
    for share in (ALWAYS, NEVER):
        block(share)
        a, lse_a = fn.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False)
        b, lse_b = fn.hsa_attention_fwd(q, k, v, idx, w, 16, 0.25, False)
        assert torch.equal(a, b) and torch.equal(lse_a[idx >= 0], lse_b[idx >= 0])
        outs[share] = (a, lse_a)
    valid = idx >= 0
    assert rel_err(outs[ALWAYS][0], outs[NEVER][0]) < 1e-6
    torch.testing.assert_close(outs[ALWAYS][1][valid], outs[NEVER][1][valid], rtol=1e-6, atol=1e-6)
    ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=16, scale=0.25)
    assert rel_err(outs[ALWAYS][0], ref) < 1e-5


@pytest.mark.triton
def test_block_empty_selection(block):
    block(ALWAYS)
    q, k, v, _, _ = _inputs(1, 20, 4, 1, 16, 16, 3, torch.float32, extra_chunks=2)
    idx = torch.full((1, 20, 1, 3), -1, dtype=torch.int32, device=DEV)
    o, _ = fn.hsa_attention_fwd(q, k, v, idx, torch.rand(1, 20, 1, 3, device=DEV), 16, 0.25, False)
    assert torch.equal(o, torch.zeros_like(o))


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("HQ,share", [(16, 16), (16, ALWAYS), (16, NEVER), (3, 16)])
def test_block_gpu_bf16(HQ, share, block, monkeypatch):
    block(share)
    base.test_attention_gpu_bf16_vs_torch_bf16(1, 8192, HQ, 1, 64, 64, 8, False, monkeypatch)
