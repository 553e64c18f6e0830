"""hsa_select against the brute-force loop of the spec."""

from __future__ import annotations

import pytest
import torch

from hsa_core.ops import hsa_select

from .brute_force import select_brute


def _inputs(B, T, C, Hr, dr, dtype=torch.float64):
    q = torch.randn(B, T, Hr, dr, dtype=dtype, requires_grad=True)
    lmk = torch.randn(B, C, Hr, dr, dtype=dtype, requires_grad=True)
    return q, lmk


@pytest.mark.parametrize("weighting", ["stick_breaking", "softmax"])
@pytest.mark.parametrize(
    "B,T,S,Hr,dr,topk,q_offset",
    [
        pytest.param(2, 37, 4, 1, 8, 3, 0, id="T-not-a-multiple-of-S"),
        pytest.param(1, 29, 5, 3, 6, 8, 0, id="topk-above-visible-chunks"),
        pytest.param(2, 13, 4, 2, 8, 2, 21, id="q-offset-a-later-segment"),
        pytest.param(1, 9, 16, 1, 4, 4, 0, id="no-complete-chunk-at-all"),
    ],
)
def test_matches_brute_force(B, T, S, Hr, dr, topk, q_offset, weighting):
    C = (T + q_offset) // S
    q, lmk = _inputs(B, T, C, Hr, dr)
    idx, w = hsa_select(q, lmk, topk=topk, chunk_size=S, q_offset=q_offset, weighting=weighting)
    idx_ref, w_ref = select_brute(q, lmk, topk, S, q_offset, weighting)
    assert idx.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(idx.long(), idx_ref)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)
    # Gradients of an arbitrary function of the weights reach q_r and landmarks exactly.
    probe = torch.randn_like(w_ref)
    if C == 0:
        (w * probe.float()).sum().backward()
        assert q.grad is not None and torch.count_nonzero(q.grad) == 0
        return
    g_q, g_l = torch.autograd.grad((w.double() * probe).sum(), (q, lmk))
    r_q, r_l = torch.autograd.grad((w_ref * probe).sum(), (q, lmk))
    torch.testing.assert_close(g_q, r_q, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_l, r_l, atol=1e-5, rtol=1e-4)


def test_window_hides_chunks_the_window_covers():
    q, lmk = _inputs(1, 40, 10, 1, 8)
    idx, w = hsa_select(q, lmk, topk=10, chunk_size=4, window=12)
    idx_ref, w_ref = select_brute(q, lmk, 10, 4, 0, "stick_breaking", window=12)
    assert torch.equal(idx.long(), idx_ref)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)


def test_sorted_recent_first_and_empty_slots_zero():
    q, lmk = _inputs(2, 64, 16, 2, 8)
    idx, w = hsa_select(q, lmk, topk=6, chunk_size=4)
    valid = idx >= 0
    assert torch.all(w[~valid] == 0)
    # ids strictly decreasing over valid slots, -1 only at the end.
    diffs = idx[..., 1:] - idx[..., :-1]
    assert torch.all((diffs < 0) | ~valid[..., 1:])
    assert torch.all(valid[..., :-1] | ~valid[..., 1:])
    # Causality: every kept chunk ends at or before the token.
    pos = torch.arange(64)[None, :, None, None]
    assert torch.all(((idx + 1) * 4 <= pos) | ~valid)
    # Stick-breaking weights sum to at most 1.
    assert torch.all(w.sum(-1) <= 1 + 1e-6)


def test_gumbel_changes_choice_not_weight_formula():
    torch.manual_seed(3)
    q, lmk = _inputs(1, 200, 50, 1, 8)
    idx, w = hsa_select(q, lmk, topk=2, chunk_size=4, gumbel=True, weighting="softmax")
    idx0, _ = hsa_select(q, lmk, topk=2, chunk_size=4, weighting="softmax")
    assert not torch.equal(idx, idx0)  # noise changed some choices
    # Weights are the clean softmax over the chosen chunks' scores.
    s = torch.einsum("bthd,bchd->bthc", q, lmk) / 8**0.5
    sel = torch.gather(s, -1, idx.clamp(min=0).long()).masked_fill(idx < 0, float("-inf"))
    ref = torch.softmax(sel, -1).nan_to_num(0.0)
    torch.testing.assert_close(w.double(), ref, atol=1e-6, rtol=1e-5)


def test_causal_changes_after_t_do_not_change_before_t():
    q, lmk = _inputs(1, 48, 12, 1, 8)
    t = 23
    idx, w = hsa_select(q, lmk, topk=3, chunk_size=4)
    q2, lmk2 = q.detach().clone(), lmk.detach().clone()
    q2[:, t:] += torch.randn_like(q2[:, t:])
    lmk2[:, t // 4:] += 5 * torch.randn_like(lmk2[:, t // 4:])  # chunks not complete before t
    idx2, w2 = hsa_select(q2, lmk2, topk=3, chunk_size=4)
    assert torch.equal(idx[:, :t], idx2[:, :t]) and torch.equal(w[:, :t], w2[:, :t])


def test_bad_arguments():
    q, lmk = _inputs(1, 8, 2, 1, 4)
    with pytest.raises(ValueError, match="weighting"):
        hsa_select(q, lmk, topk=2, chunk_size=4, weighting="max")
    with pytest.raises(ValueError, match="topk"):
        hsa_select(q, lmk, topk=0, chunk_size=4)
