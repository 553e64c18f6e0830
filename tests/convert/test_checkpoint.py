"""Checkpoint conversion: bit-exact round trips, and one-line errors naming the mismatched key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hsa_core.convert import (
    ConvertError,
    export_published,
    layout_from_config,
    load_checkpoint,
    load_published,
    to_published_state,
    to_toolkit_state,
)
from hsa_core.layout import resolve
from hsa_core.model import HSALanguageModel


def _spec(config: dict[str, Any]) -> dict[str, Any]:
    return resolve(layout_from_config(config))


@pytest.mark.parametrize("variant", ["enc2-gqa", "no-encoder", "three-groups", "flags"])
def test_round_trip_is_bit_exact(variant: str, published_model: Callable[..., Any], tmp_path: Path) -> None:
    config, state = published_model(variant)
    state["lm_head.weight"] = state["backbone.embeddings.weight"].clone()  # as their state_dict() has it
    save_file(state, str(tmp_path / "theirs.safetensors"))
    spec = _spec(config)
    model = load_published(tmp_path / "theirs.safetensors", spec)
    model.save_pretrained(tmp_path / "toolkit")
    back_dir = export_published(HSALanguageModel.from_pretrained(tmp_path / "toolkit"), tmp_path / "back")
    back = load_file(str(back_dir / "model.safetensors"))
    assert set(back) == set(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    # their config.json comes back too, describing the same model
    import json

    assert resolve(layout_from_config(json.loads((back_dir / "config.json").read_text()))) == spec


def test_bf16_checkpoint_keeps_its_dtype(published_model: Callable[..., Any], tmp_path: Path) -> None:
    config, state = published_model("enc1")
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    torch.save(state, tmp_path / "pytorch_model.bin")  # a torch state dict, read with weights_only=True
    model = load_published(tmp_path, _spec(config))
    assert next(model.parameters()).dtype == torch.bfloat16
    back = to_published_state(model.state_dict(), model.spec, include_tied_head=False)
    assert all(torch.equal(back[k], v) for k, v in state.items())


def _error(state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    with pytest.raises(ConvertError) as info:
        to_toolkit_state(state, _spec(config), source="ckpt.safetensors")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_key(published_model: Callable[..., Any]) -> None:
    config, state = published_model("enc1")
    del state["backbone.layers.3.ln.weight"]
    assert _error(state, config) == ("ckpt.safetensors: backbone.layers.3.ln.weight: missing "
                                     "(expected shape [32, 64])")


def test_extra_key(published_model: Callable[..., Any]) -> None:
    config, state = published_model("enc1")
    state["backbone.layers.99.mixer.A_log"] = torch.zeros(8)
    assert _error(state, config) == ("ckpt.safetensors: backbone.layers.99.mixer.A_log: unexpected (not in the "
                                     "model the layout describes)")


def test_wrong_shape(published_model: Callable[..., Any]) -> None:
    config, state = published_model("enc2-gqa")
    key = "backbone.layers.2.encoder.layers.1.self_attn.k_proj.weight"
    state[key] = torch.zeros(64, 64)  # 4 KV heads instead of 2
    assert _error(state, config) == f"ckpt.safetensors: {key}: shape [64, 64], expected [32, 64]"


def test_untied_head_in_a_tied_layout(published_model: Callable[..., Any]) -> None:
    config, state = published_model("enc1")
    state["lm_head.weight"] = state["backbone.embeddings.weight"] + 1.0
    assert "lm_head.weight: differs from backbone.embeddings.weight" in _error(state, config)


def test_their_embedding_alias_is_accepted(published_model: Callable[..., Any]) -> None:
    config, state = published_model("enc1")
    state["backbone.embedding.weight"] = state.pop("backbone.embeddings.weight")  # their load hook renames it
    out = to_toolkit_state(state, _spec(config))
    assert torch.equal(out["embedding.weight"], state["backbone.embedding.weight"])


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_checkpoint(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConvertError, match="not a safetensors file or a torch state dict"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ConvertError, match="expected a"):
        load_checkpoint(tmp_path / "list.pt")
