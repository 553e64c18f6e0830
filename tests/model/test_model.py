"""The composed model on a toy backbone: wiring, causality, segments == full pass, generate, gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from hsa_core.model import Block, HSALanguageModel, ModelCache, RetrievalBlock
from hsa_core.plugins import PluginHost

Layout = Callable[..., dict[str, Any]]


def build(raw: dict[str, Any], host: PluginHost) -> HSALanguageModel:
    torch.manual_seed(0)
    return HSALanguageModel.from_spec(raw, host=host, dtype=torch.float64).eval()


def run_segments(model: HSALanguageModel, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Logits of ``ids`` processed in segments ending at ``cuts`` (then the rest), carrying the cache."""
    out, cache, start = [], None, 0
    for end in [*cuts, ids.shape[1]]:
        o = model(ids[:, start:end], cache, return_cache=True)
        out.append(o.logits)
        cache, start = o.cache, end
    assert cache is not None and cache.position == ids.shape[1]
    return torch.cat(out, 1)


VARIANTS: dict[str, dict[str, Any]] = {
    "shared": {},
    "multihop": {"retrieval": {"sel": {"memory": "mid", "topk": 3, "retrieval_dim": 16, "shared": False}}},
    "per_kv_head_softmax_window": {
        "retrieval": {"sel": {"memory": "mid", "topk": 2, "retrieval_heads": 2, "weighting": "softmax",
                              "window": 6}}},
    "mean_landmark_no_encoder_mlp_untied": {
        "model": {"vocab_size": 97, "d_model": 32, "tie_embeddings": False, "mlp_hidden": 40},
        "memories": {"mid": {"after_layer": 2, "chunk_size": 4, "kv_heads": 2, "head_dim": 8, "landmark": "mean",
                             "encoder": {"layers": 0}, "k_norm": True, "chunk_norm": False}},
        "symbols": {"T": {"kind": "toy", "mlp": True},
                    "H": {"kind": "hsa", "selection": "sel", "num_heads": 2, "qk_norm": True, "sink": True,
                          "mlp": True}}},
    # The settings the published RAMba needs (tests/convert/test_presets.py checks the presets parameter
    # for parameter): encoder GQA and q/k/v biases, the floor SwiGLU width, no chunk norm, per-module eps,
    # landmark norm, the published init, and an HSA layer whose output only feeds its MLP (the authors'
    # HSA+MLP sub-layer).
    "published_options": {
        "model": {"vocab_size": 97, "d_model": 32, "tie_embeddings": True, "mlp_hidden": 48, "init": "published"},
        "memories": {"mid": {"after_layer": 2, "chunk_size": 4, "kv_heads": 2, "head_dim": 8, "chunk_norm": False,
                             "norm_eps": 1e-6, "encoder": {"layers": 2, "heads": 4, "kv_heads": 2, "qkv_bias": True,
                                                           "mlp_rounding": "down"}}},
        "retrieval": {"sel": {"memory": "mid", "topk": 2, "retrieval_dim": 16, "landmark_norm": True,
                              "norm_eps": 1e-6}},
        "symbols": {"T": "toy", "H": {"kind": "hsa", "selection": "sel", "num_heads": 4, "norm_eps": 1e-6,
                                      "residual": False, "mlp": True}}},
    "two_memories": {
        "memories": {"low": {"after_layer": 0, "chunk_size": 3, "head_dim": 8, "encoder": {"layers": 0}},
                     "mid": {"after_layer": 2, "chunk_size": 4, "kv_heads": 2, "head_dim": 8}},
        "retrieval": {"lo": {"memory": "low", "topk": 2}, "sel": {"memory": "mid", "topk": 3, "shared": False}},
        "symbols": {"T": "toy", "L": {"kind": "hsa", "selection": "lo", "num_heads": 2},
                    "H": {"kind": "hsa", "selection": "sel", "num_heads": 4}},
        "layers": "L T T H L T H"},
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, tiny: Layout, host: PluginHost) -> HSALanguageModel:
    return build(tiny(**VARIANTS[request.param]), host)


def test_structure(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(), host)
    kinds = [type(b) for b in model.layers]
    assert kinds == [Block, Block, RetrievalBlock, Block, RetrievalBlock, Block]
    assert model.tied and model.lm_head.weight is model.embedding.weight
    assert set(model.selections) == {"sel"} and all(
        b.retrieval is None for b in model.layers if isinstance(b, RetrievalBlock))
    multi = build(tiny(**VARIANTS["multihop"]), host)
    assert len(multi.selections) == 0
    own = [b.retrieval for b in multi.layers if isinstance(b, RetrievalBlock)]
    assert all(r is not None for r in own) and own[0] is not own[1]
    assert model.spec["memories"]["mid"]["after_layer"] == 2


@pytest.mark.slow
def test_segments_equal_full_pass(variant: HSALanguageModel) -> None:
    ids = torch.randint(0, 97, (2, 29))
    full = variant(ids).logits
    assert full.shape == (2, 29, 97)
    for cuts in ([1, 2, 3], [5, 13], [4, 8, 9, 10, 21], list(range(1, 29))):
        torch.testing.assert_close(run_segments(variant, ids, cuts), full, rtol=1e-10, atol=1e-10)


def test_causal(variant: HSALanguageModel) -> None:
    ids = torch.randint(0, 97, (1, 26))
    base = variant(ids).logits
    for t in (0, 3, 4, 11, 25):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 1) % 97
        logits = variant(changed).logits
        torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(logits[:, t], base[:, t])


def test_hsa_contributes_only_after_first_chunk(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(), host)
    ids = torch.randint(0, 97, (1, 20))
    base = model(ids).logits
    with torch.no_grad():
        for b in model.layers:
            if isinstance(b, RetrievalBlock):
                b.layer.o_proj.weight.zero_()
    without = model(ids).logits
    S = 4  # tokens 0..S-1 see no complete chunk: HSA adds exactly zero there
    torch.testing.assert_close(without[:, :S], base[:, :S], rtol=0, atol=0)
    assert not torch.allclose(without[:, S:], base[:, S:])


def test_generate_greedy_equals_full_forward(variant: HSALanguageModel) -> None:
    prompt = torch.randint(0, 97, (2, 7))
    ids, logits = variant.generate(prompt, 11, return_logits=True)
    assert ids.shape == (2, 18) and torch.equal(ids[:, :7], prompt)
    full = variant(ids).logits[:, 6:-1].float()
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(ids[:, 7:], full.argmax(-1))


@pytest.mark.slow
def test_generate_sampling_and_eos(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(), host)
    prompt = torch.randint(0, 97, (3, 5))
    a = model.generate(prompt, 6, do_sample=True, temperature=0.8, top_k=5,
                       generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 6, do_sample=True, temperature=0.8, top_k=5,
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 11)
    greedy = model.generate(prompt, 6)
    assert torch.equal(model.generate(prompt, 6, do_sample=True, top_k=1), greedy)
    eos = int(greedy[0, 5])
    stopped = model.generate(prompt[:1], 6, eos_token_id=eos)
    assert stopped.shape == (1, 6) and int(stopped[0, -1]) == eos
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.training is False
    model.train()
    model.generate(prompt, 2)
    assert model.training  # mode restored


def test_cache_helpers(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(), host)
    ids = torch.randint(0, 97, (3, 10))
    out = model(ids, return_cache=True)
    cache = out.cache
    assert isinstance(cache, ModelCache) and cache.position == 10
    assert cache.memories["mid"].num_chunks == 2 and cache.memories["mid"].pending.shape[1] == 2
    assert [s is None for s in cache.mixer_states] == [False, False, True, False, True, False]
    assert cache.nbytes() > 0
    one = cache.select(slice(1, 2))
    nxt = torch.randint(0, 97, (3, 3))
    torch.testing.assert_close(model(nxt[1:2], one).logits, model(nxt, cache).logits[1:2])
    empty = model.init_cache(3)
    torch.testing.assert_close(model(ids, empty).logits, out.logits)
    assert model(ids).cache is None


def test_backward_reaches_every_hsa_part(tiny: Layout, host: PluginHost) -> None:
    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(tiny(), host=host)
    ids = torch.randint(0, 97, (2, 24))
    logits = model(ids).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
    parts = {"memories.mid.encoder.layers.0.qkv.weight", "memories.mid.k_proj.weight",
             "memories.mid.landmark_proj.weight", "selections.sel.query.weight", "layers.2.layer.q_proj.weight",
             "layers.0.mixer.w_in.weight", "embedding.weight"}
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in parts:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_meta_and_dtype(tiny: Layout, host: PluginHost) -> None:
    meta = HSALanguageModel.from_spec(tiny(), device="meta", host=host)
    assert all(p.device.type == "meta" for p in meta.parameters())
    bf16 = HSALanguageModel.from_spec(tiny(), dtype=torch.bfloat16, host=host)
    assert bf16(torch.randint(0, 97, (1, 9))).logits.dtype == torch.bfloat16


def test_published_options_are_built(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(**VARIANTS["published_options"]), host)
    enc = model.memories["mid"].encoder
    assert enc is not None and len(enc.layers) == 2
    layer0 = enc.layers[0]
    assert layer0.qkv.weight.shape == ((4 + 2 * 2) * 8, 32) and layer0.qkv.bias is not None
    assert layer0.mlp.down.weight.shape == (32, 64)  # floor(8/3 * 32 / 64) * 64 = 64
    assert layer0.attn_norm.eps == 1e-6 and model.memories["mid"].k_proj.weight.shape == (16, 32)
    sel = model.selections["sel"]
    assert sel.norm.eps == 1e-6 and sel.q_norm is not None and sel.landmark_norm is not None
    hsa_block = model.layers[2]
    assert isinstance(hsa_block, RetrievalBlock) and hsa_block.layer.norm.eps == 1e-6
    assert model.layers[0].norm.eps == 1e-5


def test_hsa_output_only_feeds_the_mlp_when_residual_is_false(tiny: Layout, host: PluginHost) -> None:
    model = build(tiny(**VARIANTS["published_options"]), host)
    block = model.layers[2]
    assert isinstance(block, RetrievalBlock) and block.mlp is not None
    h = torch.randn(1, 12, 32, dtype=torch.float64)
    mem = model.memories["mid"](h)
    sel = model.selections["sel"](h, mem)
    with torch.no_grad():
        y = block.layer(h, mem, sel)
        torch.testing.assert_close(block(h, mem, sel), h + block.mlp(h + y))
        block.layer.residual = True
        torch.testing.assert_close(block(h, mem, sel), h + y + block.mlp(h + y))


def test_residual_false_needs_an_mlp(tiny: Layout, host: PluginHost) -> None:
    from hsa_core.errors import SpecError

    raw = tiny(symbols={"T": "toy", "H": {"kind": "hsa", "selection": "sel", "num_heads": 4, "residual": False}})
    with pytest.raises(SpecError, match=r"layers\[2\]\.residual: false \(from symbol 'H'\) needs mlp: true"):
        HSALanguageModel.from_spec(raw, host=host)
