"""Toolkit model == float64 re-derivation of the published RAMba, on checkpoints in the authors' naming.

A small model is built directly as a state dict in their parameter names (random weights), converted
with the toolkit's converter, and run through the toolkit's modules; the float64 re-derivation of
their math (hsa_core/convert/reference.py) runs on the unconverted state dict. Chunk memory,
selection (indices exactly, weights), every HSA layer's output and the logits must agree to 1e-5
relative to the largest reference value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from hsa_core.convert import ReferenceOutput, layout_from_config, reference_forward, to_toolkit_state
from hsa_core.layout import resolve
from hsa_core.model import HSALanguageModel, RetrievalBlock
from hsa_core.modules import Retrieval

from .conftest import VARIANTS

TOL = 1e-5


def _rel(ours: Tensor, ref: Tensor) -> float:
    return float((ours.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def _toolkit_run(model: HSALanguageModel, ids: Tensor) -> ReferenceOutput:
    """The toolkit model's logits and intermediates, captured with forward hooks."""
    got = ReferenceOutput(logits=torch.empty(0))
    handles = []
    for mem in model.memories.values():
        handles.append(mem.register_forward_hook(
            lambda _m, _i, out: got.memory.update(k=out.k, v=out.v, landmarks=out.landmarks)))
    for module in model.modules():
        if isinstance(module, Retrieval):
            handles.append(module.register_forward_hook(
                lambda _m, _i, out: got.selections.append((out.indices.long(), out.weights))))
    for block in model.layers:
        if isinstance(block, RetrievalBlock):
            handles.append(block.layer.register_forward_hook(lambda _m, _i, out: got.hsa.append(out)))
    try:
        got.logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return got


def _convert(config: dict[str, Any], state: dict[str, Tensor]) -> HSALanguageModel:
    spec = resolve(layout_from_config(config))
    model = HSALanguageModel.from_spec(spec)
    missing, unexpected = model.load_state_dict(to_toolkit_state(state, spec), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    return model.double().eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_toolkit_equals_the_float64_published_math(variant: str, published_model: Callable[..., Any]) -> None:
    config, state = published_model(variant)
    S, k = config["chunk_size"], config["chunk_topk"]
    ids = torch.randint(0, config["vocab_size"], (2, (k + 4) * S + 5))  # more chunks than top-k, a partial tail
    ref = reference_forward(state, config, ids)
    with torch.no_grad():
        ours = _toolkit_run(_convert(config, state), ids)

    for name in ("k", "v", "landmarks"):
        assert ours.memory[name].shape == ref.memory[name].shape, name
        assert _rel(ours.memory[name], ref.memory[name]) <= TOL, name
    assert len(ours.selections) == len(ref.selections) == (
        config["num_upper_groups"] if config["num_upper_groups"] > 1 else 1)
    for (oi, ow), (ri, rw) in zip(ours.selections, ref.selections, strict=True):
        assert torch.equal(oi, ri)
        assert _rel(ow, rw) <= TOL
        # the test exercises real choices: some token keeps other chunks than its k most recent ones
        visible = (ids.shape[1] - 1) // S
        most_recent = torch.arange(visible - 1, visible - 1 - k, -1)
        assert (ri[:, -1] != most_recent).any()
    assert len(ours.hsa) == len(ref.hsa) == config["num_upper_layers"] // config["num_mamba_per_gca"]
    for o, r in zip(ours.hsa, ref.hsa, strict=True):
        assert r[:, S:].abs().max() > 1e-3  # HSA contributes (zero only for the first chunk's tokens)
        assert _rel(o, r) <= TOL
    assert _rel(ours.logits, ref.logits) <= TOL


def test_the_check_fails_when_the_math_differs(published_model: Callable[..., Any]) -> None:
    """The comparison can fail: with the toolkit's default chunk norm before the encoder (which the
    published model does not have), the memory no longer matches."""
    config, state = published_model("enc1")
    spec = resolve(layout_from_config(config))
    spec["memories"]["mid"]["chunk_norm"] = True
    model = HSALanguageModel.from_spec(spec)
    toolkit = to_toolkit_state(state, resolve(layout_from_config(config)))
    model.load_state_dict({**model.state_dict(), **toolkit})
    ids = torch.randint(0, config["vocab_size"], (1, 6 * config["chunk_size"]))
    with torch.no_grad():
        ours = _toolkit_run(model.double().eval(), ids)
    ref = reference_forward(state, config, ids)
    assert _rel(ours.memory["k"], ref.memory["k"]) > 1e-2
