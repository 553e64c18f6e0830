"""Every example layout validates and builds; the CPU-sized ones run; the library example runs.

examples/*.yaml are relative symlinks to the presets shipped as package data (hsa_core/presets),
so the files a user reads and the presets ``hsa build <name>`` uses are the same bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hsa_core import presets
from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel
from hsa_core.summary import describe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LAYOUTS = sorted(p.name for p in EXAMPLES.glob("*.yaml"))

# Layouts small enough to build and run as they are on CPU.
CPU_SIZED = ("ramba-cpu.yaml", "minlstm-hsa.yaml")
# The large ones, shrunk through --set-style overrides to run a forward pass on CPU (fla's layers
# run under Triton's interpreter on CPU, so these stay tiny).
SHRINK = {
    "ramba-370m.yaml": ["layers=M*2 | (H M)*2"],
    "ramba-370m-multihop.yaml": ["layers=M*2 | (H M)*2"],
    "ramba-370m-enc2.yaml": ["layers=M*2 | (H M)*2"],
    "swa-hsa.yaml": ["layers=S*2 | (H S)*2", "defaults.swa.num_heads=4", "defaults.swa.window=16",
                     "retrieval.sel.window=16", "symbols.H.num_heads=4", "model.mlp_hidden=64"],
    "gla-hsa.yaml": ["layers=G*2 | (H G)*2", "symbols.H.num_heads=4"],
    "rwkv7-hsa.yaml": ["layers=R*2 | (H R)*2", "symbols.H.num_heads=4", "defaults.rwkv7.head_dim=16"],
}
COMMON_SHRINK = ["model.vocab_size=128", "model.d_model=64", "memories.mid.after_layer=2",
                 "memories.mid.chunk_size=8", "memories.mid.head_dim=16"]
RETRIEVAL_DIM = {"ramba-370m.yaml": "mid_sel", "ramba-370m-multihop.yaml": "mid_sel",
                 "ramba-370m-enc2.yaml": "mid_sel", "gla-hsa.yaml": "mid_sel",
                 "rwkv7-hsa.yaml": "mid_sel", "swa-hsa.yaml": "sel"}


def test_examples_are_symlinks_to_the_presets() -> None:
    assert set(LAYOUTS) == {f"{name}.yaml" for name in presets.names()}
    for name in LAYOUTS:
        link = EXAMPLES / name
        assert link.is_symlink(), f"{name} should be a symlink into hsa_core/presets"
        assert not os.path.isabs(os.readlink(link)), f"{name}: use a relative link (works in any clone)"
        assert link.resolve() == presets.path(link.stem).resolve()


# Full-size fla layouts are only validated here: building 48 fla layers, even on meta, costs tens of
# seconds on CPU (tests/model builds them once); the shrunk forward test below builds them for real.
FLA_KINDS = {"gla", "rwkv6", "rwkv7"}


@pytest.mark.parametrize("name", LAYOUTS)
def test_example_validates_and_builds_on_meta(name: str) -> None:
    spec = load_spec(EXAMPLES / name)
    assert spec["name"] == Path(name).stem
    if FLA_KINDS & {layer["kind"] for layer in spec["layers"]}:
        return
    model = HSALanguageModel.from_spec(spec, device="meta")
    summary = describe(model, context_len=8192)
    assert summary.total > 0 and summary.num_layers == len(spec["layers"])


def test_ramba_370m_matches_the_published_layout_and_size() -> None:
    spec = load_spec(EXAMPLES / "ramba-370m.yaml")
    kinds = [layer["kind"] for layer in spec["layers"]]
    assert kinds == ["mamba2"] * 24 + (["hsa"] + ["mamba2"] * 8) * 3
    summary = describe(spec, context_len=4096)
    # hsa_spec.md: Mamba2-370M backbone ~368.3M (incl. the 51.5M tied embedding) + ~21M = ~389M.
    assert summary.embedding == 50280 * 1024
    assert abs((summary.embedding + summary.backbone) / 368.3e6 - 1) < 0.01
    assert abs(summary.total / 389e6 - 1) < 0.02


def _overrides(name: str) -> list[str]:
    if name in CPU_SIZED:
        return []
    sel = RETRIEVAL_DIM[name]
    return [*COMMON_SHRINK, f"retrieval.{sel}.retrieval_dim=64", *SHRINK[name]]


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUTS)
def test_example_runs_a_forward_pass_on_cpu(name: str) -> None:
    spec = load_spec(EXAMPLES / name, overrides=_overrides(name))
    model = HSALanguageModel.from_spec(spec, device="cpu").eval()
    chunk = next(iter(spec["memories"].values()))["chunk_size"]
    ids = torch.randint(0, spec["model"]["vocab_size"], (1, 2 * chunk + 3))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (*ids.shape, spec["model"]["vocab_size"])
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_library_example_runs() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "library_use.py")], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "save/load: identical logits after reload: True" in result.stdout
