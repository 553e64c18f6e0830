"""The composed model on CUDA (Triton HSA kernels through the dispatch point, the backbones' fast paths):
segments == full pass and greedy generation == full forward, in fp32 and bf16."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel
from hsa_core.plugins import backbones
from tests.optional_deps import skip_unless_required

pytestmark = pytest.mark.gpu
PRESETS = Path(__file__).resolve().parents[2] / "hsa_core" / "presets"
KINDS = ["mamba", "mamba2", "gla", "rwkv6", "rwkv7", "swa", "attention"]
TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3)}


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """fp32: elementwise. bf16: a different split rounds differently, which can flip a near-tie in the
    discrete top-k choice and move a few logits a lot; require agreement on average."""
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, **TOL[dtype])
        return
    scale = expected.abs().mean()
    assert (actual - expected).abs().mean() < 0.02 * scale


def _layout(kind: str) -> dict:
    spec = load_spec(PRESETS / "ramba-cpu.yaml")
    raw = {k: spec[k] for k in ("model", "memories", "retrieval")}
    raw["layers"] = [{"kind": kind}] * 4 + [{"kind": "hsa", "selection": "mid_sel", "num_heads": 4}, {"kind": kind}] * 2
    raw["model"] = {**raw["model"], "vocab_size": 512}
    return raw


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_hybrid_on_cuda(kind: str, dtype: torch.dtype) -> None:
    if kind not in backbones():
        skip_unless_required(f"{kind} not registered")
    if any(importlib.util.find_spec(m) is None for m in backbones().get(kind).requires):
        skip_unless_required(f"{kind}: optional dependency missing")
    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(_layout(kind), device="cuda", dtype=dtype).eval()
    ids = torch.randint(0, 512, (2, 300), device="cuda")
    with torch.no_grad():
        full = model(ids).logits.float()
        parts, cache, start = [], None, 0
        for end in (37, 38, 160, 300):
            out = model(ids[:, start:end], cache, return_cache=True)
            parts.append(out.logits.float())
            cache, start = out.cache, end
    close(torch.cat(parts, 1), full, dtype)
    gen, logits = model.generate(ids[:, :250], 8, return_logits=True)
    with torch.no_grad():
        ref = model(gen).logits[:, 249:-1].float()
    close(logits, ref, dtype)
