"""Retrieval and HSA layer: causality, exact zeros before the first chunk, segment equivalence, options."""

from __future__ import annotations

import pytest
import torch

from hsa_core.modules import ChunkMemory, HSALayer, Retrieval


def _stack(d=32, S=4, H=2, Hr=1, HQ=4, D=8, topk=3, weighting="stick_breaking", **layer_opts):
    mem = ChunkMemory(d, chunk_size=S, kv_heads=H, head_dim=D, landmark_dim=16, retrieval_heads=Hr,
                      k_norm=layer_opts.get("qk_norm", False))
    ret = Retrieval(d, retrieval_dim=16, retrieval_heads=Hr, topk=topk, chunk_size=S, weighting=weighting)
    layer = HSALayer(d, kv_heads=H, head_dim=D, chunk_size=S, num_heads=HQ, **layer_opts)
    return mem, ret, layer


def _run(mods, x, mem_state=None, q_offset=0):
    mem, ret, layer = mods
    st = mem(x, mem_state)
    return layer(x, st, ret(x, st, q_offset)), st


@pytest.mark.parametrize("opts", [dict(), dict(qk_norm=True), dict(sink=True), dict(Hr=2),
                                  dict(weighting="softmax"), dict(H=1, HQ=16)])
def test_causal_and_zero_before_first_chunk(opts):
    mods = _stack(**opts)
    x = torch.randn(2, 26, 32)
    y, _ = _run(mods, x)
    assert torch.count_nonzero(y[:, :4]) == 0  # tokens 0..S-1 see no complete chunk
    assert torch.count_nonzero(y[:, 4:]) > 0
    for t in (5, 12, 19):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:])
        y2, _ = _run(mods, x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=1e-5)


def test_segments_and_tokens_equal_full_pass():
    mods = [m.eval() for m in _stack()]
    x = torch.randn(2, 23, 32)
    full, _ = _run(mods, x)
    for splits in ([5, 6, 12], [1] * 23):
        outs, st, t = [], None, 0
        for n in splits:
            y, st = _run(mods, x[:, t:t + n], st, q_offset=t)
            outs.append(y)
            t += n
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter():
    mods = _stack()
    x = torch.randn(2, 30, 32, requires_grad=True)
    y, _ = _run(mods, x)
    y.square().sum().backward()
    for m in mods:
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_gumbel_only_while_training():
    d, S = 16, 4
    mem = ChunkMemory(d, chunk_size=S, head_dim=8, landmark_dim=16)
    ret = Retrieval(d, retrieval_dim=16, topk=1, chunk_size=S, gumbel=True)
    x = torch.randn(1, 200, d)
    st = mem(x)
    ret.eval()
    a, b = ret(x, st), ret(x, st)
    assert torch.equal(a.indices, b.indices)
    ret.train()
    c = ret(x, st)
    assert not torch.equal(a.indices, c.indices)


def test_bad_head_ratio():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        HSALayer(32, kv_heads=3, head_dim=8, chunk_size=4, num_heads=4)


def test_captured_selections_records_every_call_on_the_cpu_and_unhooks():
    from hsa_core.modules import captured_selections

    mem, ret, _ = _stack()
    model = torch.nn.ModuleDict({"sel": ret})
    x = torch.randn(2, 24, 32)
    st = mem(x[:, :12])
    with captured_selections(model) as captured:
        first = ret(x[:, :12], st)
        second = ret(x[:, 12:], mem(x[:, 12:], st), q_offset=12)
    assert list(captured) == ["sel"] and len(captured["sel"]) == 2
    for got, want in zip(captured["sel"], (first, second), strict=True):
        assert got.indices.device.type == "cpu" and got.indices.dtype == torch.int32
        assert torch.equal(got.indices, want.indices.int()) and torch.equal(got.weights, want.weights.float())
    ret(x[:, :12], st)  # after the block: no hook left
    assert len(captured["sel"]) == 2
    with captured_selections(torch.nn.Linear(2, 2)) as none:
        assert none == {}
