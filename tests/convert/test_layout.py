"""The authors' configs <-> layouts, and one-line refusals of what their code cannot build."""

from __future__ import annotations

from typing import Any

import pytest

from hsa_core.convert import ConvertError, config_from_spec, layout_from_config, published_groups
from hsa_core.layout import load_spec, resolve
from hsa_core.presets import path as preset_path

from .conftest import SMALL, VARIANTS


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_layout_config_round_trip(variant: str) -> None:
    config = {**SMALL, **VARIANTS[variant]}
    spec = resolve(layout_from_config(config))
    back = config_from_spec(spec)
    assert resolve(layout_from_config(back)) == spec
    for key, value in back.items():
        if key in config:
            assert config[key] == value, key


def test_module_order_is_theirs() -> None:
    spec = resolve(layout_from_config({**SMALL, **VARIANTS["two-groups-of-two"]}))
    kinds = [what for what, _ in published_groups(spec)]
    assert kinds == ["mamba", "mamba", "chunking", "retrieval", "hsa", "mamba", "hsa", "mamba",
                     "retrieval", "hsa", "mamba", "hsa", "mamba"]


@pytest.mark.parametrize(("flag", "value"), [("enc_prenorm", True), ("hsa_only", False), ("enable_pos_decay", True)])
def test_unsupported_flags_are_named(flag: str, value: Any) -> None:
    with pytest.raises(ConvertError, match=f"^their.json: {flag}: {value!r} is not supported"):
        layout_from_config({**SMALL, flag: value}, source="their.json")


def test_missing_config_key_is_named() -> None:
    config = dict(SMALL)
    del config["chunk_topk"]
    with pytest.raises(ConvertError, match=r"^config\.json: chunk_topk: missing"):
        layout_from_config(config)


@pytest.mark.parametrize(("overrides", "message"), [
    (["memories.mid.chunk_norm=true"], "memories.mid.chunk_norm: true; their encoder has no norm before it"),
    (["memories.mid.encoder.mlp_rounding=up"], "memories.mid.encoder.mlp_hidden: 2752; theirs is 2688"),
    (["memories.mid.norm_eps=1e-5"], "memories.mid.norm_eps: 1e-05; theirs is 1e-06"),
    (["overrides={30: {mlp: true}}"], "layers[30].mlp: true; their RAMba layers have no MLP"),
    (["memories.mid.k_norm=true"], "memories.mid.k_norm: True while the HSA layers' qk_norm is False"),
])
def test_layouts_their_code_cannot_build_are_refused(overrides: list[str], message: str) -> None:
    spec = load_spec(preset_path("ramba-370m"), overrides=overrides)
    with pytest.raises(ConvertError) as info:
        config_from_spec(spec)
    assert str(info.value).startswith(message)
    assert str(info.value).endswith("(the authors' RAMba code cannot build this)")


def test_other_backbones_are_refused() -> None:
    with pytest.raises(ConvertError, match=r"layers\[0\].kind: 'swa'"):
        config_from_spec(load_spec(preset_path("swa-hsa")))
