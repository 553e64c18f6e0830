"""``linear_cross_entropy`` (fused LM head + cross-entropy) against ``F.cross_entropy(x @ W.T)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hsa_core.losses import linear_cross_entropy


@pytest.mark.parametrize("chunk", [pytest.param(1, id="chunk1"), pytest.param(7, id="chunk7"),
                                   pytest.param(4096, id="one-chunk")])
def test_matches_dense_loss_and_gradients(chunk: int) -> None:
    x = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 37, (23,))
    t[[3, 10]] = -100  # ignored rows: no loss, no gradient
    ref = F.cross_entropy(x @ w.t(), t, reduction="sum", ignore_index=-100)
    got = linear_cross_entropy(x, w, t, chunk_size=chunk)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    gx_ref, gw_ref = torch.autograd.grad(ref * 1.7, [x, w])
    gx, gw = torch.autograd.grad(got * 1.7, [x, w])
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-6)
    assert gx[3].abs().max() == 0 and gx[10].abs().max() == 0


def test_bf16_autocast_is_as_close_as_the_dense_bf16_loss() -> None:
    x = torch.randn(64, 32)
    w = torch.randn(100, 32) * 0.3
    t = torch.randint(0, 100, (64,))
    exact = F.cross_entropy(x.double() @ w.double().t(), t, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = F.cross_entropy((x @ w.t()).float(), t, reduction="sum")
        fused = linear_cross_entropy(x, w, t, chunk_size=16)
    assert abs(fused.double() - exact) <= 2 * abs(dense.double() - exact) + 1e-3 * abs(exact)


def test_tied_weight_gets_gradient_and_no_grad_mode_works() -> None:
    emb = torch.nn.Embedding(11, 8)
    h = emb(torch.tensor([[1, 2, 3]]))[0]
    loss = linear_cross_entropy(h, emb.weight, torch.tensor([2, 3, 4]))
    loss.backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.isfinite(linear_cross_entropy(h.detach(), emb.weight, torch.tensor([2, 3, 4])))


def test_bad_shapes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(5, 9), torch.zeros(4, dtype=torch.long))
