"""The token-block forward (``schedule="block"``) vs the fp64 naive twin.

Blocks of consecutive tokens that chose few distinct chunks go to ``_hsa_fwd_block_kernel`` (each
distinct K/V tile loaded once for all the block's rows), the other tokens to the query-outer kernel,
which skips the shared blocks. ``AttentionLaunch.block_share_max`` forces either (0: no block is
shared, except all-empty ones; a large value: every block is). CPU:
Triton interpreter; 16-bit inputs in fp16 (bf16 tl.dot is wrong in the interpreter; bf16 runs under
``-m gpu``).
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.forward as fwd_mod
import pytest
import torch
from hsa_kernels.hsa_attention import AttentionLaunch, hsa_attention_naive

from .helpers import (
    DEV,
    SMALL_SHAPES,
    PoisonTorch,
    Shape,
    attention_inputs,
    check_attention,
    check_attention_on,
    check_gpu_bf16_vs_torch_bf16,
    one_chunk_case,
    rel_err,
    shared_selection,
)

pytestmark = pytest.mark.triton

ALWAYS, NEVER = 1 << 20, 0
SHARES = [pytest.param(ALWAYS, id="every-block-shared"), pytest.param(NEVER, id="no-block-shared"),
          pytest.param(16, id="share-max-16")]
SHAPES = [pytest.param(shape, id=name) for name, shape in SMALL_SHAPES.items()]


def _fwd(q, k, v, idx, w, schedule, launch):
    return fwd_mod.hsa_attention_fwd(q, k, v, idx.contiguous(), w, 16, 0.25, False, schedule=schedule, launch=launch)


@pytest.mark.slow
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("shape", SHAPES)
def test_block_fp32(shape: Shape, share: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fwd_mod, "torch", PoisonTorch())  # unwritten outputs / LSE would come back as NaN
    check_attention(shape, torch.float32, 1e-5, empty_frac=0.2, schedule="block",
                    launch=AttentionLaunch(block_share_max=share))


@pytest.mark.slow
@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("HQ,rows", [pytest.param(16, 64, id="G16-4-tokens"), pytest.param(4, 32, id="G4-2-tokens"),
                                     pytest.param(16, 256, id="G16-16-tokens")])
def test_block_shared_selection(share: int, HQ: int, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tokens of a block chose the same chunks (with duplicates across blocks of other sizes too).
    monkeypatch.setattr(fwd_mod, "torch", PoisonTorch())
    shape = Shape(B=1, T=45, HQ=HQ, H=1, D=16, S=16, K=3, sink=True)
    q, k, v, _, _ = attention_inputs(shape, torch.float32)
    for bt in (4, 3):
        idx, w = shared_selection(B=1, T=45, H=1, K=3, S=16, block_tokens=bt, empty_frac=0.1)
        check_attention_on(q, k, v, idx, w, 16, True, 1e-5, schedule="block",
                           launch=AttentionLaunch(block_share_max=share, block_rows=rows))


@pytest.mark.parametrize("share", SHARES[:2])
def test_block_fp16(share: int) -> None:
    check_attention(Shape(B=1, T=35, HQ=16, H=1, D=32, S=16, K=3), torch.float16, 3e-3, empty_frac=0.1,
                    schedule="block", launch=AttentionLaunch(block_share_max=share))


@pytest.mark.slow
@pytest.mark.parametrize("share", SHARES[:2])
def test_block_one_chunk_repeated_slots(share: int) -> None:
    # C = 1, chunk 0 repeated across the slots of a row (a chunk a token counts twice), whole empty rows.
    q, k, v, idx, w = one_chunk_case(B=2, T=37, HQ=3, H=1, D=16, S=16, K=3, every_slot_rows=True)
    for sink in (False, True):
        o, _ = check_attention_on(q, k, v, idx, w, 16, sink, 1e-5, schedule="block",
                                  launch=AttentionLaunch(block_share_max=share))
        assert torch.equal(o[:, ::4], torch.zeros_like(o[:, ::4]))


@pytest.mark.slow
def test_block_paths_agree_and_are_deterministic() -> None:
    q, k, v, idx, w = attention_inputs(Shape(B=1, T=45, HQ=16, H=1, D=16, S=16, K=3), torch.float32, empty_frac=0.2)
    outs = {}
    for share in (ALWAYS, NEVER):
        launch = AttentionLaunch(block_share_max=share)
        a, lse_a = _fwd(q, k, v, idx, w, "block", launch)
        b, lse_b = _fwd(q, k, v, idx, w, "block", launch)
        assert torch.equal(a, b) and torch.equal(lse_a[idx >= 0], lse_b[idx >= 0])
        outs[share] = (a, lse_a)
    valid = idx >= 0
    assert rel_err(outs[ALWAYS][0], outs[NEVER][0]) < 1e-6
    torch.testing.assert_close(outs[ALWAYS][1][valid], outs[NEVER][1][valid], rtol=1e-6, atol=1e-6)
    ref = hsa_attention_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=16, scale=0.25)
    assert rel_err(outs[ALWAYS][0], ref) < 1e-5


def test_block_empty_selection() -> None:
    q, k, v, _, _ = attention_inputs(Shape(B=1, T=20, HQ=4, H=1, D=16, S=16, K=3), torch.float32, extra_chunks=2)
    idx = torch.full((1, 20, 1, 3), -1, dtype=torch.int32, device=DEV)
    o, _ = _fwd(q, k, v, idx, torch.rand(1, 20, 1, 3, device=DEV), "block", AttentionLaunch(block_share_max=ALWAYS))
    assert torch.equal(o, torch.zeros_like(o))


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("HQ,share", [(16, 16), (16, ALWAYS), (16, NEVER), (3, 16)])
def test_block_gpu_bf16(HQ: int, share: int) -> None:
    check_gpu_bf16_vs_torch_bf16(Shape(B=1, T=8192, HQ=HQ, H=1, D=64, S=64, K=8), schedule="block",
                                 launch=AttentionLaunch(block_share_max=share))
