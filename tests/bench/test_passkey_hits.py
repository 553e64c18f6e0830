"""``bench/passkey_hits.py``: where the key is, whether the selection holds it, end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("passkey_hits", ROOT / "bench" / "passkey_hits.py")
assert _spec is not None and _spec.loader is not None
hits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hits)


def test_key_chunks_covers_every_earlier_occurrence_and_stops_at_end() -> None:
    row = torch.arange(100, 140)
    key = torch.tensor([7, 8, 9, 6])
    row[10:14] = key  # chunk 1 (size 8)
    row[30:34] = key  # chunks 3 and 4
    row[36:40] = key  # the answer itself: at or after `end`, not counted
    assert hits.key_chunks(row, key, 36, 8) == {1, 3, 4}
    assert hits.key_chunks(row, key, 12, 8) == set()  # the first occurrence is not complete before 12
    assert hits.key_chunks(row, torch.tensor([1000]), 40, 8) == set()


def test_hit_rates_per_head_and_any_head() -> None:
    # B=2 samples, T=6, 2 heads, top-2; answers read at positions 4 and 5
    idx = torch.full((2, 6, 2, 2), -1, dtype=torch.int32)
    idx[0, 4] = torch.tensor([[3, 1], [0, -1]])  # head 0 holds chunk 3, head 1 does not
    idx[0, 5] = torch.tensor([[2, 0], [3, 2]])   # head 1 holds it
    idx[1, 4] = torch.tensor([[5, 4], [5, 4]])   # sample 1's key is in chunk 9: never held
    idx[1, 5] = torch.tensor([[5, 4], [5, 4]])
    pos = torch.tensor([[4, 5], [4, 5]])
    hit, any_head = hits.hit_rates(idx, pos, [{3}, {9}])
    assert hit == 2 / 8 and any_head == 2 / 4
    # the fusion weight on the key's chunks: sample 0 holds chunk 3 at (pos 4, head 0) and (pos 5, head 1)
    w = torch.full((2, 6, 2, 2), 0.25)
    w[0, 4, 0] = torch.tensor([0.7, 0.3])
    w[0, 5, 1] = torch.tensor([0.1, 0.9])
    kw = hits.key_weights(idx, w, pos, [{3}, {9}])
    assert kw.shape == (2, 2, 2)
    assert kw[0].tolist() == [[pytest.approx(0.7), 0.0], [0.0, pytest.approx(0.1)]] and kw[1].eq(0).all()


@pytest.mark.slow  # 11 s
def test_selection_of_every_chunk_always_holds_the_key(tmp_path: Path) -> None:
    """A top-k larger than the number of chunks selects every visible chunk, so the key's chunk is held
    at every answer position (hit 1.0); a top-1 random model holds it at most that often."""
    for name, topk in (("all", 64), ("one", 1)):
        # softmax fusion: every selected chunk gets a share (stick-breaking can leave old ones ~0 untrained)
        built = subprocess.run([sys.executable, "-m", "hsa_cli", "build", "tests/app/training/tiny.yaml", "--set",
                                f"retrieval.sel.topk={topk}", "--set", "retrieval.sel.weighting=softmax",
                                "--out", str(tmp_path / name)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr
    out = tmp_path / "hits.json"
    assert hits.main([str(tmp_path / "all"), "--lengths", "256,512", "--depths", "0.2,0.8", "--samples", "3",
                      "--segment-len", "128", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["length"], r["depth"]) for r in rows] == [(256, 0.2), (256, 0.8), (512, 0.2), (512, 0.8)]
    sel = [r["selections.sel"] for r in rows]
    assert all((s["hit"], s["hit_any_head"]) == (1.0, 1.0) for s in sel), rows
    assert all(s["per_sample"]["hit"] == [1.0] * 3 and len(s["per_sample"]["key_weight"]) == 3 for s in sel)
    assert all(len(r["per_sample_exact"]) == 3 and set(r["per_sample_exact"]) <= {0, 1} for r in rows)
    # per sample, the same means as over the cell
    s0 = sel[0]
    assert sum(s0["per_sample"]["key_weight"]) / 3 == pytest.approx(s0["key_weight"], abs=1e-3)
    assert all(0.0 < s["key_weight"] <= 1.0 + 1e-6 for s in sel), rows  # the key's chunks get a share
    assert hits.main([str(tmp_path / "one"), "--lengths", "512", "--depths", "0.5", "--samples", "3",
                      "--segment-len", "128", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert 0.0 <= row["selections.sel"]["hit"] <= 1.0 and 0.0 <= row["exact_match"] <= 1.0
