"""hsa_attention against the brute-force loop of the spec."""

from __future__ import annotations

from dataclasses import dataclass

import hsa_kernels.hsa_attention.naive as naive_mod
import pytest
import torch

from hsa_core.ops import hsa_attention, hsa_select

from .brute_force import attention_brute


@dataclass(frozen=True)
class Case:
    """Sizes of one attention call; its selection comes from ``hsa_select`` on random scores (d_r = 8)."""

    B: int  # batch
    T: int  # tokens
    S: int  # chunk size
    H: int  # KV heads
    G: int  # query heads per KV head
    D: int  # head dim
    topk: int  # slots per token
    q_offset: int = 0  # position of the first token


def _inputs(case: Case, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """``q, k, v`` (leaves needing grad) over every chunk complete by the last token, ``idx`` and ``w`` (a
    leaf in fp64)."""
    B, T, S, H, G, D, topk, q_offset = case.B, case.T, case.S, case.H, case.G, case.D, case.topk, case.q_offset
    C = (T + q_offset) // S
    q_r = torch.randn(B, T, H, 8, dtype=dtype)
    lmk = torch.randn(B, C, H, 8, dtype=dtype)
    idx, w = hsa_select(q_r, lmk, topk=topk, chunk_size=S, q_offset=q_offset)
    q = torch.randn(B, T, H * G, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, C * S, H, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, C * S, H, D, dtype=dtype, requires_grad=True)
    w = w.double().requires_grad_(True)
    return q, k, v, idx, w


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(B=2, T=23, S=4, H=1, G=1, D=8, topk=3), id="G1"),
        pytest.param(Case(B=1, T=19, S=3, H=2, G=3, D=4, topk=8), id="G3-topk-above-visible-chunks"),
        pytest.param(Case(B=1, T=11, S=4, H=1, G=16, D=8, topk=2, q_offset=9), id="G16-q-offset"),
    ],
)
def test_matches_brute_force(case: Case, sink: bool) -> None:
    q, k, v, idx, w = _inputs(case)
    out = hsa_attention(q, k, v, idx, w, chunk_size=case.S, sink=sink)
    ref = attention_brute(q, k, v, idx, w, case.S, sink=sink)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    probe = torch.randn_like(ref)
    grads = torch.autograd.grad((out * probe).sum(), (q, k, v, w))
    grads_ref = torch.autograd.grad((ref * probe).sum(), (q, k, v, w))
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8)


def test_tokens_before_first_chunk_get_exact_zero():
    q, k, v, idx, w = _inputs(Case(B=1, T=30, S=8, H=1, G=4, D=8, topk=4), dtype=torch.float32)
    out = hsa_attention(q, k, v, idx, w, chunk_size=8)
    assert torch.count_nonzero(out[:, :8]) == 0
    assert torch.count_nonzero(out[:, 8:]) > 0


def test_empty_slots_ignore_their_weight():
    q, k, v, idx, w = _inputs(Case(B=1, T=20, S=4, H=1, G=2, D=8, topk=6))
    poisoned = w.detach().clone()
    poisoned[idx < 0] = 123.0  # a weight on an empty slot must not leak into the output
    torch.testing.assert_close(hsa_attention(q, k, v, idx, poisoned, chunk_size=4),
                               hsa_attention(q, k, v, idx, w, chunk_size=4))


def test_blocked_and_checkpointed_path_matches(monkeypatch):
    """Force tiny query blocks so the memory-light path (blocks + checkpointing) runs."""
    q, k, v, idx, w = _inputs(Case(B=2, T=37, S=4, H=2, G=2, D=8, topk=3))
    full = hsa_attention(q, k, v, idx, w, chunk_size=4)
    g_full = torch.autograd.grad(full.sum(), (q, k, v, w))
    monkeypatch.setattr(naive_mod, "_BLOCK_ELEMENTS", 1)
    blocked = hsa_attention(q, k, v, idx, w, chunk_size=4)
    g_blocked = torch.autograd.grad(blocked.sum(), (q, k, v, w))
    torch.testing.assert_close(blocked, full)
    for a, b in zip(g_blocked, g_full):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_close_to_fp64(dtype):
    q, k, v, idx, w = _inputs(Case(B=1, T=64, S=8, H=1, G=4, D=16, topk=4))
    ref = hsa_attention(q, k, v, idx, w, chunk_size=8)
    out = hsa_attention(q.to(dtype), k.to(dtype), v.to(dtype), idx, w.float(), chunk_size=8)
    assert out.dtype == dtype
    err = (out.double() - ref).abs().max().item()
    assert err < (1e-5 if dtype == torch.float32 else 3e-2), err


def test_causal_changes_after_t_do_not_change_before_t():
    q, k, v, idx, w = _inputs(Case(B=1, T=40, S=4, H=1, G=2, D=8, topk=3))
    t = 17
    out = hsa_attention(q, k, v, idx, w, chunk_size=4)
    q2, k2, v2 = q.detach().clone(), k.detach().clone(), v.detach().clone()
    q2[:, t:] = torch.randn_like(q2[:, t:])
    k2[:, (t // 4) * 4:] = torch.randn_like(k2[:, (t // 4) * 4:])  # keys of chunks not complete before t
    v2[:, (t // 4) * 4:] = torch.randn_like(v2[:, (t // 4) * 4:])
    out2 = hsa_attention(q2, k2, v2, idx, w.detach(), chunk_size=4)
    assert torch.equal(out[:, :t], out2[:, :t])


def test_shape_errors():
    q, k, v, idx, w = _inputs(Case(B=1, T=8, S=4, H=2, G=2, D=8, topk=2))
    with pytest.raises(ValueError, match="multiple of KV heads"):
        hsa_attention(q[:, :, :3], k, v, idx, w, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        hsa_attention(q, k, v, idx, w, chunk_size=3)
