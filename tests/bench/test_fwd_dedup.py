"""``bench/experimental/fwd_dedup.py`` (a forward that loads each distinct chunk once per block of
tokens) against the fp64 naive twin, and its LSE against the query-outer forward's, which the backward
reads. CPU: Triton's interpreter; 16-bit inputs in fp16 (bf16 tl.dot is wrong in the interpreter)."""

from __future__ import annotations

import hsa_kernels.hsa_attention.forward as fwd_mod
import pytest
import torch
from hsa_cli.bench import load_kernel_bench
from hsa_kernels.hsa_attention import hsa_attention_naive

from tests.kernels.helpers import (
    SMALL_SHAPES,
    PoisonTorch,
    Shape,
    attention_inputs,
    one_chunk_case,
    rel_err,
    shared_selection,
)

pytestmark = pytest.mark.triton
dedup = load_kernel_bench().load_experimental_dedup()


def _check(q, k, v, idx, w, S: int, sink: bool, block_t: int, tol: float) -> None:
    idx = idx.to(torch.int32).contiguous()
    o, lse = dedup.hsa_attention_fwd_dedup(q, k, v, idx, w, S, 0.25, sink, block_t=block_t)
    ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=S, scale=0.25,
                              sink=sink)
    assert rel_err(o, ref) <= tol
    _, lse_ref = fwd_mod.hsa_attention_fwd(q, k, v, idx, w, S, 0.25, sink)
    valid = ((idx >= 0) & (idx < k.shape[1] // S))[..., None].expand_as(lse_ref)
    assert valid.any()
    torch.testing.assert_close(lse[valid], lse_ref[valid], atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("block_t", [pytest.param(4, id="4-tokens"), pytest.param(2, id="2-tokens")])
@pytest.mark.parametrize("shape", [pytest.param(s, id=n) for n, s in SMALL_SHAPES.items()])
def test_random_selection_fp32(shape: Shape, block_t: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "torch", PoisonTorch())  # an unwritten output row would come back as NaN
    q, k, v, idx, w = attention_inputs(shape, torch.float32, empty_frac=0.2)
    _check(q, k, v, idx, w, shape.S, shape.sink, block_t, 1e-5)


@pytest.mark.parametrize("tokens", [pytest.param(4, id="blocks-of-4"), pytest.param(3, id="blocks-of-3")])
def test_shared_chunks_are_loaded_once_and_added_per_token(tokens: int) -> None:
    """Neighbouring tokens chose the same chunks (the case the kernel is for), with their own weights;
    blocks of 3 straddle the kernel's blocks of 4."""
    shape = Shape(B=1, T=45, HQ=16, H=1, D=16, S=16, K=3, sink=True)
    q, k, v, _, _ = attention_inputs(shape, torch.float32)
    idx, w = shared_selection(B=1, T=45, H=1, K=3, S=16, block_tokens=tokens, empty_frac=0.1)
    for block_t in (4, 8):
        _check(q, k, v, idx, w, 16, True, block_t, 1e-5)


def test_one_chunk_in_every_slot_and_empty_rows() -> None:
    # C = 1: chunk 0 repeated across a row's slots (its weights add), rows with no valid slot (zeros).
    q, k, v, idx, w = one_chunk_case(B=2, T=37, HQ=3, H=1, D=16, S=16, K=3, every_slot_rows=True)
    for sink in (False, True):
        o, _ = dedup.hsa_attention_fwd_dedup(q, k, v, idx.contiguous(), w, 16, 0.25, sink)
        ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=16, scale=0.25,
                                  sink=sink)
        assert rel_err(o, ref) <= 1e-5
        empty = (idx < 0).all(-1)[..., None].expand(-1, -1, 3, 16)  # (B, T, HQ, D) of all-empty rows
        assert empty.any() and (o[empty] == 0).all()


def test_fp16() -> None:
    shape = Shape(B=1, T=35, HQ=16, H=1, D=32, S=16, K=3)
    q, k, v, idx, w = attention_inputs(shape, torch.float16, empty_frac=0.1)
    o, _ = dedup.hsa_attention_fwd_dedup(q, k, v, idx.to(torch.int32).contiguous(), w, 16, 0.25, False)
    ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=16, scale=0.25)
    assert o.dtype == torch.float16 and rel_err(o, ref) <= 3e-3


def test_no_tokens_and_a_bad_block() -> None:
    shape = Shape(B=1, T=16, HQ=2, H=1, D=16, S=16, K=2)
    q, k, v, idx, w = attention_inputs(shape, torch.float32)
    o, lse = dedup.hsa_attention_fwd_dedup(q[:, :0], k, v, idx[:, :0].contiguous(), w[:, :0], 16, 0.25, False)
    assert o.shape == (1, 0, 2, 16) and lse is not None and lse.shape == (1, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="block_t must be 2, 4 or 8, got 3"):
        dedup.hsa_attention_fwd_dedup(q, k, v, idx.contiguous(), w, 16, 0.25, False, block_t=3)
