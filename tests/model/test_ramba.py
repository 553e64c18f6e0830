"""RAMba-370M and its variants, built on the meta device: parameter counts against the spec's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel
from hsa_core.plugins import backbones
from hsa_core.summary import describe
from tests.optional_deps import skip_unless_required

PRESETS = Path(__file__).resolve().parents[2] / "hsa_core" / "presets"


def _need(*kinds: str) -> None:
    missing = [k for k in kinds if k not in backbones()]
    if missing:
        skip_unless_required(f"backbones not registered: {missing}")


def test_ramba_370m_parameter_count() -> None:
    """hsa_spec.md section 7 / design.md: Mamba2 backbone ~368.3M (48 blocks of ~6.60M + 51.5M tied
    embedding), the 1-layer chunk encoder + HSA projections ~21M, ~389M in all."""
    _need("mamba2")
    s = describe(load_spec(PRESETS / "ramba-370m.yaml"), context_len=4096)
    print("\n" + s.format_table().split("\n\n")[-1])
    blocks = [r.params for r in s.rows if r.kind == "mamba2"]
    assert len(blocks) == 48 and len(set(blocks)) == 1
    assert blocks[0] == pytest.approx(6.60e6, rel=0.01)
    assert s.embedding == 50280 * 1024  # 51.49M, tied: the head adds nothing
    assert next(r for r in s.rows if r.kind == "lm_head").params == 0
    assert s.embedding + s.backbone == pytest.approx(368.3e6, rel=0.01)
    assert s.hsa_extras == pytest.approx(21e6, rel=0.05)
    assert s.total == pytest.approx(389e6, rel=0.02)
    assert [r.index for r in s.rows if r.kind == "hsa"] == [24, 33, 42]
    assert all(r.wiring == "reads mid via mid_sel" for r in s.rows if r.kind == "hsa")
    # The memory is built from the stream after the 24 lower blocks: its row sits between 23 and 24.
    kinds = [r.kind for r in s.rows]
    assert kinds[kinds.index("memory") - 1] == "mamba2" and s.rows[kinds.index("memory") - 1].index == 23


def test_multihop_adds_one_retrieval_projection_per_extra_layer() -> None:
    _need("mamba2")
    shared = describe(load_spec(PRESETS / "ramba-370m.yaml"), context_len=0)
    multi = describe(load_spec(PRESETS / "ramba-370m-multihop.yaml"), context_len=0)
    # three re-selections with their own W_r (+ norm) instead of one shared: two more d x d_r
    assert multi.total - shared.total == 2 * (1024 * 1024 + 1024)
    assert all("re-selects" in r.wiring for r in multi.rows if r.kind == "hsa")
    model = HSALanguageModel.from_spec(load_spec(PRESETS / "ramba-370m-multihop.yaml"), device="meta")
    assert len(model.selections) == 0 and model.layers[24].retrieval is not None


def test_swa_hsa_builds() -> None:
    _need("swa")
    spec = load_spec(PRESETS / "swa-hsa.yaml")
    s = describe(spec, context_len=16384)
    assert s.layer_kinds == {"swa": 24, "hsa": 3}
    hsa_rows = [r for r in s.rows if r.kind == "hsa"]
    assert all(r.mlp for r in hsa_rows) and all("re-selects" in r.wiring for r in hsa_rows)
    assert spec["retrieval"]["sel"]["weighting"] == "softmax" and spec["retrieval"]["sel"]["window"] == 512
    assert s.memory_bytes > 0 and s.state_bytes > 0


# rwkv7-hsa is left out: fla initialises RWKV7 weights element by element (~15 s for 24+24 layers).
@pytest.mark.parametrize("preset", ["gla-hsa", "ramba-cpu", "minlstm-hsa"])
def test_other_presets_build_on_meta(preset: str) -> None:
    spec = load_spec(PRESETS / f"{preset}.yaml")
    _need(*{layer["kind"] for layer in spec["layers"] if layer["role"] == "backbone"})
    s = describe(spec, context_len=1024)
    assert s.total == s.embedding + s.backbone + s.hsa_extras + s.other
