"""describe(): layer table, wiring text, totals, sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hsa_core.model import HSALanguageModel
from hsa_core.plugins import PluginHost
from hsa_core.summary import describe, format_bytes, format_count

Layout = Callable[..., dict[str, Any]]


def test_rows_and_totals(tiny: Layout, host: PluginHost) -> None:
    s = describe(tiny(), context_len=10, host=host)
    kinds = [r.kind for r in s.rows]
    assert kinds == ["embedding", "toy", "toy", "memory", "selection", "hsa", "toy", "hsa", "toy", "norm", "lm_head"]
    assert [r.index for r in s.rows if r.index is not None] == list(range(6))
    assert sum(r.params for r in s.rows) == s.total
    assert s.total == s.embedding + s.backbone + s.hsa_extras + s.other
    hsa = [r for r in s.rows if r.kind == "hsa"]
    assert hsa[0].wiring == "reads mid via sel" and hsa[0].plugin == "hsa_builtin_layers"
    mem = next(r for r in s.rows if r.kind == "memory")
    assert mem.wiring.startswith("builds memory mid from the stream after 2 layers") and mem.name == "mid"
    sel = next(r for r in s.rows if r.kind == "selection")
    assert "shared by layers 2, 4" in sel.wiring
    assert s.layer_kinds == {"toy": 4, "hsa": 2} and s.num_layers == 6
    # toy state: 4 layers x (B=1, 2*32) fp32; memory at 10 tokens: 2 chunks of S=4 (K,V: 2x8x2x8) + 2 landmarks
    # of 16 + 2 pending tokens of d=32
    assert s.state_bytes == 4 * 64 * 4
    assert s.memory_bytes == (2 * 8 * 2 * 8 + 2 * 16 + 2 * 32) * 4
    text = s.format_table()
    assert "reads mid via sel" in text and "HSA extras" in text
    assert s.to_dict()["rows"][0]["kind"] == "embedding"


def test_model_and_meta_agree(tiny: Layout, host: PluginHost) -> None:
    raw = tiny(retrieval={"sel": {"memory": "mid", "shared": False}})
    built = HSALanguageModel.from_spec(raw, host=host)
    a = describe(built, context_len=64, dtype=torch.bfloat16)
    b = describe(raw, context_len=64, host=host, dtype=torch.bfloat16)
    assert a.to_dict() == b.to_dict()
    assert "re-selects" in next(r for r in a.rows if r.kind == "hsa").wiring
    assert not any(r.kind == "selection" for r in a.rows)
    assert a.dtype == "bfloat16"


def test_formatting() -> None:
    assert format_count(368_300_000) == "368.30M" and format_count(999) == "999"
    assert format_bytes(1536) == "1.50 KiB" and format_bytes(12) == "12 B"
