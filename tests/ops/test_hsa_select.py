"""hsa_select against the brute-force loop of the spec."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hsa_core.ops import hsa_select

from .brute_force import select_brute


def _inputs(*, B: int, T: int, C: int, Hr: int, dr: int,
            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Random leaves needing grad: queries (B, T, Hr, dr) and landmarks (B, C, Hr, dr)."""
    q = torch.randn(B, T, Hr, dr, dtype=dtype, requires_grad=True)
    lmk = torch.randn(B, C, Hr, dr, dtype=dtype, requires_grad=True)
    return q, lmk


@dataclass(frozen=True)
class Case:
    """One selection over every chunk complete by the last token."""

    B: int  # batch
    T: int  # tokens
    S: int  # chunk size
    Hr: int  # retrieval heads
    dr: int  # retrieval head dim
    topk: int  # slots per token
    q_offset: int = 0  # position of the first token


@pytest.mark.parametrize("weighting", ["stick_breaking", "softmax"])
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(B=2, T=37, S=4, Hr=1, dr=8, topk=3), id="T-not-a-multiple-of-S"),
        pytest.param(Case(B=1, T=29, S=5, Hr=3, dr=6, topk=8), id="topk-above-visible-chunks"),
        pytest.param(Case(B=2, T=13, S=4, Hr=2, dr=8, topk=2, q_offset=21), id="q-offset-a-later-segment"),
        pytest.param(Case(B=1, T=9, S=16, Hr=1, dr=4, topk=4), id="no-complete-chunk-at-all"),
    ],
)
def test_matches_brute_force(case: Case, weighting: str) -> None:
    C = (case.T + case.q_offset) // case.S
    q, lmk = _inputs(B=case.B, T=case.T, C=C, Hr=case.Hr, dr=case.dr)
    idx, w = hsa_select(q, lmk, topk=case.topk, chunk_size=case.S, q_offset=case.q_offset, weighting=weighting)
    idx_ref, w_ref = select_brute(q, lmk, case.topk, case.S, case.q_offset, weighting)
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
    q, lmk = _inputs(B=1, T=40, C=10, Hr=1, dr=8)
    idx, w = hsa_select(q, lmk, topk=10, chunk_size=4, window=12)
    idx_ref, w_ref = select_brute(q, lmk, 10, 4, 0, "stick_breaking", window=12)
    assert torch.equal(idx.long(), idx_ref)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)


def test_sorted_recent_first_and_empty_slots_zero():
    q, lmk = _inputs(B=2, T=64, C=16, Hr=2, dr=8)
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
    q, lmk = _inputs(B=1, T=200, C=50, Hr=1, dr=8)
    idx, w = hsa_select(q, lmk, topk=2, chunk_size=4, gumbel=True, weighting="softmax")
    idx0, _ = hsa_select(q, lmk, topk=2, chunk_size=4, weighting="softmax")
    assert not torch.equal(idx, idx0)  # noise changed some choices
    # Weights are the clean softmax over the chosen chunks' scores.
    s = torch.einsum("bthd,bchd->bthc", q, lmk) / 8**0.5
    sel = torch.gather(s, -1, idx.clamp(min=0).long()).masked_fill(idx < 0, float("-inf"))
    ref = torch.softmax(sel, -1).nan_to_num(0.0)
    torch.testing.assert_close(w.double(), ref, atol=1e-6, rtol=1e-5)


def test_causal_changes_after_t_do_not_change_before_t():
    q, lmk = _inputs(B=1, T=48, C=12, Hr=1, dr=8)
    t = 23
    idx, w = hsa_select(q, lmk, topk=3, chunk_size=4)
    q2, lmk2 = q.detach().clone(), lmk.detach().clone()
    q2[:, t:] += torch.randn_like(q2[:, t:])
    lmk2[:, t // 4:] += 5 * torch.randn_like(lmk2[:, t // 4:])  # chunks not complete before t
    idx2, w2 = hsa_select(q2, lmk2, topk=3, chunk_size=4)
    assert torch.equal(idx[:, :t], idx2[:, :t]) and torch.equal(w[:, :t], w2[:, :t])


def test_bad_arguments():
    q, lmk = _inputs(B=1, T=8, C=2, Hr=1, dr=4)
    with pytest.raises(ValueError, match="weighting"):
        hsa_select(q, lmk, topk=2, chunk_size=4, weighting="max")
    with pytest.raises(ValueError, match="topk"):
        hsa_select(q, lmk, topk=0, chunk_size=4)
    for scale in (0.0, -0.5, float("nan")):  # a non-positive scale would invert or flatten the ranking
        with pytest.raises(ValueError, match="scale must be positive"):
            hsa_select(q, lmk, topk=2, chunk_size=4, scale=scale)
