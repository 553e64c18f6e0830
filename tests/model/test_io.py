"""Model directories: atomic writes, tied weights, load -> save -> load identical."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import hsa_core
from hsa_core.errors import HSAError
from hsa_core.io import read_config, save_pretrained
from hsa_core.layout import resolve
from hsa_core.model import HSALanguageModel
from hsa_core.plugins import PluginHost

Layout = Callable[..., dict[str, Any]]


def _same(a: HSALanguageModel, b: HSALanguageModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.spec == b.spec


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(tiny: Layout, host: PluginHost, tmp_path: Path, tied: bool) -> None:
    raw = tiny(model={"vocab_size": 97, "d_model": 32, "tie_embeddings": tied})
    model = HSALanguageModel.from_spec(raw, host=host).eval()
    first = model.save_pretrained(tmp_path / "m1")
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "config.yaml", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1"]  # no temp dirs left behind
    spec = resolve(raw, host=host)
    assert json.loads((first / "config.json").read_text()) == spec
    assert yaml.safe_load((first / "config.yaml").read_text()) == spec
    assert read_config(first) == spec

    loaded = HSALanguageModel.from_pretrained(first, host=host).eval()
    _same(model, loaded)
    assert loaded.tied is tied
    save_pretrained(loaded, tmp_path / "m2")
    again = HSALanguageModel.from_pretrained(tmp_path / "m2", host=host).eval()
    _same(loaded, again)
    for name in ("config.json", "config.yaml", "model.safetensors"):
        assert (first / name).read_bytes() == (tmp_path / "m2" / name).read_bytes(), name
    ids = torch.randint(0, 97, (2, 13))
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_refuses_then_replaces_atomically(tiny: Layout, host: PluginHost, tmp_path: Path) -> None:
    model = HSALanguageModel.from_spec(tiny(), host=host)
    target = save_pretrained(model, tmp_path / "m")
    with pytest.raises(FileExistsError):
        save_pretrained(model, target)
    (target / "notes.txt").write_text("old directory")
    other = HSALanguageModel.from_spec(tiny(model={"vocab_size": 50, "d_model": 32}), host=host)
    save_pretrained(other, target, overwrite=True)
    assert not (target / "notes.txt").exists()  # the whole directory was swapped, not patched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert hsa_core.load_pretrained(target, host=host).vocab_size == 50


def test_dtype_and_mismatch(tiny: Layout, host: PluginHost, tmp_path: Path) -> None:
    model = HSALanguageModel.from_spec(tiny(), host=host)
    d = save_pretrained(model, tmp_path / "m")
    half = HSALanguageModel.from_pretrained(d, host=host, dtype=torch.bfloat16)
    assert half.embedding.weight.dtype == torch.bfloat16 and half.tied
    meta = HSALanguageModel.from_spec(tiny(), host=host, device="meta")
    with pytest.raises(ValueError, match="meta"):
        save_pretrained(meta, tmp_path / "x")
    spec = json.loads((d / "config.json").read_text())
    spec["memories"]["mid"]["head_dim"] = 16
    (d / "config.json").write_text(json.dumps(spec))
    (d / "config.yaml").unlink()  # (an edit of one config alone is refused: tests/model/test_io_errors.py)
    with pytest.raises(HSAError, match="does not match its config"):
        HSALanguageModel.from_pretrained(d, host=host)
