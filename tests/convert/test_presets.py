"""The RAMba presets are the authors' models, parameter for parameter.

Each "as published" claim in hsa_core/presets/ramba-370m*.yaml is checked here: the parameter count,
every tensor's name and shape against the authors' checkpoint layout (re-derived from their module
definitions in tests/convert/published_params.py), the layout the authors' config describes, and
(at reduced width, same settings) the outputs against the float64 re-derivation of their math.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from hsa_core.convert import config_from_spec, layout_from_config, published_shapes
from hsa_core.layout import load_spec, resolve
from hsa_core.model import HSALanguageModel
from hsa_core.presets import path as preset_path

from .published_configs import CONFIG_DEFAULT, CONFIG_ENC1_4096, CONFIG_ENC1_4096_3HOP
from .published_params import count, published_parameter_table

PUBLISHED = [
    # preset, the authors' config, the count their code builds (recounted by hand from their modules)
    ("ramba-370m", CONFIG_ENC1_4096, 389_321_344),
    ("ramba-370m-enc2", CONFIG_DEFAULT, 398_629_632),
    ("ramba-370m-multihop", CONFIG_ENC1_4096_3HOP, 391_420_544),
]


def _without_name(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out.pop("name")
    out.pop("description", None)
    return out


@pytest.mark.parametrize(("preset", "config", "expected"), PUBLISHED)
def test_parameter_count_equals_the_authors(preset: str, config: dict[str, Any], expected: int) -> None:
    assert count(published_parameter_table(config)) == expected
    model = HSALanguageModel.from_spec(load_spec(preset_path(preset)), device="meta")
    assert model.num_parameters() == expected


@pytest.mark.parametrize(("preset", "config", "expected"), PUBLISHED)
def test_every_tensor_maps_to_the_authors_name_and_shape(preset: str, config: dict[str, Any], expected: int) -> None:
    spec = load_spec(preset_path(preset))
    assert published_shapes(spec) == published_parameter_table(config)


@pytest.mark.parametrize(("preset", "config", "expected"), PUBLISHED)
def test_preset_is_the_layout_their_config_describes(preset: str, config: dict[str, Any], expected: int) -> None:
    spec = load_spec(preset_path(preset))
    assert _without_name(resolve(layout_from_config(config))) == _without_name(spec)
    # and back: the preset written as their config gives every architecture key of theirs
    back = config_from_spec(spec)
    for key, value in back.items():
        if key in config:
            assert config[key] == value, key


def test_published_settings_in_the_preset() -> None:
    spec = load_spec(preset_path("ramba-370m"))
    mem, sel = spec["memories"]["mid"], spec["retrieval"]["mid_sel"]
    assert mem["chunk_norm"] is False  # their enc_prenorm is off
    assert mem["encoder"] == {"layers": 1, "heads": 16, "kv_heads": 16, "qkv_bias": True, "mlp_hidden": 2688,
                              "mlp_rounding": "down"}
    assert (mem["norm_eps"], sel["norm_eps"], spec["model"]["norm_eps"]) == (1e-6, 1e-6, 1e-5)
    assert {layer["options"]["norm_eps"] for layer in spec["layers"] if layer["kind"] == "hsa"} == {1e-6}
    assert spec["model"]["init"] == "published"
    enc2 = load_spec(preset_path("ramba-370m-enc2"))["memories"]["mid"]["encoder"]
    assert (enc2["layers"], enc2["kv_heads"]) == (2, 4)


@pytest.mark.parametrize("preset", ["ramba-370m", "ramba-370m-enc2", "ramba-370m-multihop"])
def test_published_init(preset: str) -> None:
    # Reduced width, same settings: A_log = log(1..heads), N(0, 0.02) retrieval projections, zero biases.
    spec = load_spec(preset_path(preset), overrides=[
        "model.d_model=128", "model.vocab_size=64", "layers=M*2 | (H M*1)*3", "memories.mid.after_layer=2",
        "memories.mid.head_dim=8", "retrieval.mid_sel.retrieval_dim=128", "defaults.mamba2.headdim=32"])
    model = HSALanguageModel.from_spec(spec)
    heads = model.layers[0].mixer.A_log.shape[0]
    torch.testing.assert_close(model.layers[0].mixer.A_log.detach(),
                               torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
    mem = model.memories["mid"]
    for p in (mem.k_proj.weight, mem.landmark_proj.weight, model.layers[2].layer.q_proj.weight):
        assert abs(p.std().item() - 0.02) < 0.004
    assert torch.count_nonzero(mem.encoder.layers[0].qkv.bias) == 0


# The presets at reduced width (every published setting kept; only sizes shrunk).
SHRINK = ["model.d_model=64", "model.vocab_size=64", "layers=M*2 | (H M*1)*3", "memories.mid.after_layer=2",
          "memories.mid.head_dim=4", "memories.mid.chunk_size=16", "retrieval.mid_sel.retrieval_dim=64",
          "retrieval.mid_sel.topk=2", "defaults.mamba2.headdim=32", "defaults.mamba2.d_state=8",
          "defaults.mamba2.chunk_size=32"]


@pytest.mark.parametrize("preset", ["ramba-370m", "ramba-370m-enc2", "ramba-370m-multihop"])
def test_preset_equals_the_float64_published_math(preset: str) -> None:
    from hsa_core.convert import check_conversion

    model = HSALanguageModel.from_spec(load_spec(preset_path(preset), overrides=SHRINK))
    with torch.no_grad():  # weights of unit scale, so that every path (HSA included) moves the logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    result = check_conversion(model, tokens=6 * 16)
    assert result.relative <= 1e-5
