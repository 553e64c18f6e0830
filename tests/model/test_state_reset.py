"""``HSALanguageModel.forward(..., state_reset_every=N)`` against its naive twin: one model call per
N-token segment, the mixer states replaced by the zero state at each boundary while the chunk memory
and the position carry on (what the training forward did before it folded the segments into the
batch)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel, ModelCache


def _spec(symbol: dict[str, Any]) -> dict[str, Any]:
    return load_spec({
        "version": 1, "name": "reset", "model": {"vocab_size": 61, "d_model": 32, "tie_embeddings": True},
        "memories": {"mid": {"after_layer": 1, "chunk_size": 4, "kv_heads": 1, "head_dim": 16,
                             "encoder": {"layers": 1}}},
        "retrieval": {"sel": {"memory": "mid", "topk": 2, "retrieval_dim": 16, "retrieval_heads": 1}},
        "symbols": {"B": symbol, "H": {"kind": "hsa", "selection": "sel", "num_heads": 2}},
        "layers": "B H B"})


BACKBONES = [
    pytest.param({"kind": "mamba2", "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 16, "chunk_size": 8},
                 id="mamba2"),
    pytest.param({"kind": "mamba", "d_state": 4, "d_conv": 3, "expand": 2}, id="mamba"),
    # a state that grows with the sequence (a KV cache) and one that is a fixed window
    pytest.param({"kind": "attention", "num_heads": 2}, id="attention"),
    pytest.param({"kind": "swa", "num_heads": 2, "window": 6}, id="swa"),
]


def segment_loop(model: HSALanguageModel, ids: Tensor, every: int,
                 cache: ModelCache | None = None) -> tuple[Tensor, ModelCache]:
    """The twin: one call per segment; at each boundary the mixer states become the zero state."""
    zero = model.init_cache(ids.shape[0]).mixer_states
    cache = cache if cache is not None else model.init_cache(ids.shape[0])
    parts = []
    for s in range(0, ids.shape[1], every):
        if s:
            cache.mixer_states = list(zero)
        out = model(ids[:, s:s + every], cache, return_cache=True)
        parts.append(out.logits)
        cache = out.cache
    return torch.cat(parts, 1), cache


def _assert_caches_equal(a: ModelCache, b: ModelCache) -> None:
    assert a.position == b.position
    for sa, sb in zip(a.mixer_states, b.mixer_states, strict=True):
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert sa.keys() == sb.keys()
            for k in sa:
                torch.testing.assert_close(sa[k], sb[k], atol=1e-5, rtol=1e-5)
    for name in a.memories:
        ma, mb = a.memories[name], b.memories[name]
        assert ma.num_chunks == mb.num_chunks
        torch.testing.assert_close(ma.k, mb.k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symbol", BACKBONES)
@pytest.mark.parametrize(("length", "every"), [
    pytest.param(40, 8, id="whole-segments"),
    pytest.param(37, 8, id="a-shorter-tail"),
    pytest.param(13, 1, id="every-token"),
    pytest.param(9, 16, id="longer-than-the-input"),
])
def test_reset_equals_one_call_per_segment(symbol: dict[str, Any], length: int, every: int) -> None:
    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(_spec(symbol))
    ids = torch.randint(0, 61, (2, length))
    out = model(ids, return_cache=True, state_reset_every=every)
    ref, ref_cache = segment_loop(model, ids, every)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    _assert_caches_equal(out.cache, ref_cache)


@pytest.mark.parametrize("symbol", BACKBONES)
@pytest.mark.parametrize("length", [pytest.param(12, id="two-segments-after-the-first"),
                                    pytest.param(23, id="and-a-tail")])
def test_reset_continues_a_given_cache_in_its_first_segment(symbol: dict[str, Any], length: int) -> None:
    """A call that continues a cache (memory, position and mixer states from 17 earlier tokens): only
    the first segment sees the given mixer states."""
    torch.manual_seed(1)
    model = HSALanguageModel.from_spec(_spec(symbol))
    before, ids = torch.randint(0, 61, (2, 17)), torch.randint(0, 61, (2, length))
    cache = model(before, return_cache=True).cache
    out = model(ids, cache, state_reset_every=4)
    ref, ref_cache = segment_loop(model, ids, 4, cache)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    _assert_caches_equal(out.cache, ref_cache)


def test_given_mixer_states_reach_the_first_segment_only() -> None:
    """Backbone only (no memory to carry the first segment's outputs on): a cache's mixer states
    change the logits of the first segment and of no later one."""
    torch.manual_seed(4)
    spec = load_spec({"version": 1, "name": "b", "model": {"vocab_size": 61, "d_model": 32},
                      "symbols": {"B": BACKBONES[0].values[0]}, "layers": "B B"})
    model = HSALanguageModel.from_spec(spec)
    ids = torch.randint(0, 61, (2, 14))
    with torch.no_grad():
        warm = model(ids, model(torch.randint(0, 61, (2, 9)), return_cache=True).cache, state_reset_every=4).logits
        cold = model(ids, state_reset_every=4).logits
    assert not torch.allclose(warm[:, :4], cold[:, :4], atol=1e-4)
    torch.testing.assert_close(warm[:, 4:], cold[:, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", [pytest.param(False, id="plain"), pytest.param(True, id="checkpointed")])
def test_reset_gradients_equal_the_twins(checkpointing: bool) -> None:
    torch.manual_seed(2)
    model = HSALanguageModel.from_spec(_spec(BACKBONES[0].values[0]))
    model.gradient_checkpointing = checkpointing
    model.train()
    ids = torch.randint(0, 61, (2, 30))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(ids, state_reset_every=8).logits.square().mean()
    grads = torch.autograd.grad(loss, params)
    ref = segment_loop(model, ids, 8)[0].square().mean()
    ref_grads = torch.autograd.grad(ref, params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_reset_cuts_the_backbone_and_not_the_memory() -> None:
    """Changing the tokens of the first segment changes no later logit of a backbone-only model, and
    some of a model with chunk memory (the earlier tokens reach later ones through HSA only)."""
    torch.manual_seed(3)
    ids = torch.randint(0, 61, (2, 24))
    other = ids.clone()
    other[:, :8] = (ids[:, :8] + 1) % 61
    mamba2 = BACKBONES[0].values[0]
    backbone_only = load_spec({"version": 1, "name": "b", "model": {"vocab_size": 61, "d_model": 32},
                               "symbols": {"B": mamba2}, "layers": "B B"})
    for spec, memory in ((backbone_only, False), (_spec(mamba2), True)):
        model = HSALanguageModel.from_spec(spec)
        with torch.no_grad():
            a = model(ids, state_reset_every=8).logits[:, 8:]
            b = model(other, state_reset_every=8).logits[:, 8:]
        assert torch.allclose(a, b, atol=1e-6) is not memory


def test_reset_length_is_checked() -> None:
    model = HSALanguageModel.from_spec(_spec(BACKBONES[0].values[0]))
    with pytest.raises(ValueError, match="state_reset_every must be >= 1 tokens, got 0"):
        model(torch.zeros(1, 4, dtype=torch.long), state_reset_every=0)
