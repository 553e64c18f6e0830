"""``bench/chunk_similarity.py``: the in-chunk cosine on hand-made states, and end to end on a tiny
layout (with overrides) and a saved model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "app" / "training" / "tiny.yaml"
_spec = importlib.util.spec_from_file_location("chunk_similarity", ROOT / "bench" / "chunk_similarity.py")
assert _spec is not None and _spec.loader is not None
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def test_chunk_cosine_on_hand_made_states() -> None:
    same = torch.randn(1, 1, 5).expand(2, 12, 5)  # every token the same vector
    assert sim.chunk_cosine(same, 4) == pytest.approx(1.0)
    one_hot = torch.eye(8).view(1, 8, 8)  # orthogonal tokens
    assert sim.chunk_cosine(one_hot, 4) == pytest.approx(0.0)
    # two chunks of two tokens: (a, a) and (b, -b): cosines 1 and -1, mean 0; the incomplete third chunk is ignored
    a, b = torch.randn(3), torch.randn(3)
    x = torch.stack([a, a, b, -b, torch.randn(3)]).view(1, 5, 3)
    assert sim.chunk_cosine(x, 2) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(sim.chunk_cosine(x, 8))  # no complete chunk


def test_layouts_and_saved_models_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    model_dir = tmp_path / "model"
    HSALanguageModel.from_spec(load_spec(TINY)).save_pretrained(model_dir)
    out = tmp_path / "sim.json"
    assert sim.main([str(TINY), "--seq-len", "40", "--samples", "2", "--out", str(out)]) == 0
    assert sim.main([str(model_dir), "--seq-len", "40", "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "memory mid (after layer 1)" in printed and str(model_dir) in printed
    (r,) = json.loads(out.read_text())
    assert len(r["layers"]) == 4  # the embeddings, then the three layers of "M H M"
    assert all(-1 <= c <= 1 for c in r["layers"]) and r["memories"]["mid"]["after_layer"] == 1
    assert sim.main([str(TINY), "--set", "memories.mid.after_layer=0", "--seq-len", "40", "--samples", "1",
                     "--out", str(out)]) == 0
    (r0,) = json.loads(out.read_text())
    # built from the embeddings, the memory's keys are as unalike as the (random) embeddings of random ids
    assert r0["memories"]["mid"]["after_layer"] == 0 and abs(r0["memories"]["mid"]["k"]) < 0.5
    with pytest.raises(SystemExit, match="--set applies to layouts"):
        sim.main([str(model_dir), "--set", "model.d_model=64"])


def test_tokens_from_a_prepared_folder(tmp_path: Path) -> None:
    from hsa_app.data import PrepareOptions, open_data, prepare

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"doc{i}.txt").write_text(f"document {i}: " + "some plain words here. " * 30)
    prepare(PrepareOptions([str(texts)], val_fraction=0.4), tmp_path / "data", progress=False)
    val = open_data(tmp_path / "data").split("validation")
    ids = sim.token_ids(96, str(tmp_path / "data"), 3, 50, seed=1)
    assert ids.shape == (3, 50) and ids.max() < 256  # bytes
    text = val.read(0, val.num_tokens).tolist()
    row = ids[0].tolist()
    assert any(text[s:s + 50] == row for s in range(len(text) - 49))  # a window of the validation text
    with pytest.raises(SystemExit, match="fewer than"):
        sim.token_ids(96, str(tmp_path / "data"), 1, val.num_tokens + 1, seed=1)
