"""Every built-in backbone inside a hybrid with HSA, on CPU: forward/backward, segments == full pass,
greedy generation == full forward. fla backbones run under Triton's interpreter here, so the shapes
are tiny (B=1, T=24, d=64)."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import pytest
import torch

from hsa_core.model import HSALanguageModel
from hsa_core.plugins import backbones
from tests.optional_deps import skip_unless_required

# Options that make each backbone tiny at d_model=64 (anything not set keeps its registered default).
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "mamba": {"d_state": 8},
    "mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8},
    "gla": {"num_heads": 2},
    "rwkv6": {"num_heads": 2, "proj_low_rank_dim": 8, "gate_low_rank_dim": 16},
    "rwkv7": {"head_dim": 32},
    "swa": {"num_heads": 4, "window": 8},
    "attention": {"num_heads": 4},
}


def hybrid(kind: str) -> dict[str, Any]:
    return {
        "name": f"{kind}-hsa-tiny",
        "model": {"vocab_size": 64, "d_model": 64},
        "defaults": {kind: TINY_OPTIONS[kind]},
        "memories": {"mid": {"after_layer": 1, "chunk_size": 8, "kv_heads": 1, "head_dim": 16,
                             "encoder": {"layers": 1, "heads": 2, "mlp_hidden": 64}}},
        "retrieval": {"sel": {"memory": "mid", "topk": 2, "retrieval_dim": 32}},
        "symbols": {"K": kind, "H": {"kind": "hsa", "selection": "sel", "num_heads": 2}},
        "layers": "K H K",
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TINY_OPTIONS))
def test_backbone_in_hybrid(kind: str) -> None:
    registry = backbones()
    if kind not in registry:
        skip_unless_required(f"backbone {kind!r} is not registered")
    info = registry.get(kind)
    missing = [m for m in info.requires if importlib.util.find_spec(m) is None]
    if missing:
        skip_unless_required(f"{kind} needs {missing}")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = HSALanguageModel.from_spec(hybrid(kind))
    ids = torch.randint(0, 64, (1, 24))

    # forward + backward (train mode)
    logits = model(ids).logits
    assert logits.shape == (1, 24, 64) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    for name in ("layers.0.mixer", "layers.1.layer", "memories.mid", "selections.sel"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name

    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        parts, cache, start = [], None, 0
        for end in (7, 8, 17, 24):  # odd segment, one token, across chunk boundaries
            out = model(ids[:, start:end], cache, return_cache=True)
            parts.append(out.logits)
            cache, start = out.cache, end
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-3, atol=1e-4)

    gen, gen_logits = model.generate(ids[:, :19], 4, return_logits=True)
    with torch.no_grad():
        ref = model(gen).logits[:, 18:-1]
    torch.testing.assert_close(gen_logits, ref, rtol=1e-3, atol=1e-4)
    assert torch.equal(gen[:, 19:], ref.argmax(-1))
    print(f"{kind}: {time.perf_counter() - t0:.1f}s")
