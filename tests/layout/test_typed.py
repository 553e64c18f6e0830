"""The typed canonical spec (``hsa_core/layout/typed.py``): the dict path and the dataclass path give
byte-identical canonical JSON for every preset and example, load -> to_dict -> from_dict round-trips,
and the model builds the same from either."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hsa_core import presets
from hsa_core.errors import SpecError
from hsa_core.layout import (
    EncoderSettings,
    LayerSpec,
    MemoryGroup,
    ModelSettings,
    ResolvedSpec,
    SelectionGroup,
    dump_spec,
    load_spec,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = [presets.path(n) for n in presets.names()] + sorted((ROOT / "examples").glob("*.yaml"))


def _canonical_json(spec: dict) -> str:
    return json.dumps(spec, indent=2) + "\n"  # exactly what config.json holds (hsa_core/io.py)


@pytest.mark.parametrize("path", LAYOUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dict_and_dataclass_paths_give_the_same_canonical_json(path: Path) -> None:
    spec = load_spec(path)
    typed = ResolvedSpec.from_dict(spec)
    assert _canonical_json(typed.to_dict()) == _canonical_json(spec)
    assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(spec, sort_keys=True)
    assert dump_spec(typed.to_dict()) == dump_spec(spec)
    assert ResolvedSpec.from_dict(typed.to_dict()) == typed  # load -> to_dict -> from_dict
    assert ResolvedSpec.load(path) == typed
    assert resolve(typed.to_dict()) == spec  # still a canonical spec
    assert ResolvedSpec.resolve(typed) == typed


def test_fields_are_typed_records() -> None:
    typed = ResolvedSpec.load(presets.path("ramba-370m"))
    assert isinstance(typed.model, ModelSettings) and typed.model.d_model == 1024
    mem = typed.memories["mid"]
    assert isinstance(mem, MemoryGroup) and isinstance(mem.encoder, EncoderSettings) and mem.encoder.layers == 1
    sel = typed.retrieval["mid_sel"]
    assert isinstance(sel, SelectionGroup) and sel.topk == 8 and sel.shared
    assert all(isinstance(layer, LayerSpec) for layer in typed.layers) and len(typed.layers) == 51
    hsa = next(layer for layer in typed.layers if layer.is_retrieval)
    assert typed.memory_of(hsa) is mem and typed.selection_of(hsa) is sel
    assert typed.layers[0].selection is None and "selection" not in typed.layers[0].to_dict()


def test_records_are_frozen() -> None:
    typed = ResolvedSpec.load(presets.path("ramba-cpu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.model.d_model = 7  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.layers = ()  # type: ignore[misc]


def test_description_is_kept_only_when_set() -> None:
    spec = load_spec(presets.path("ramba-cpu"), overrides=["description=a test"])
    assert list(spec)[:3] == ["version", "name", "description"]
    typed = ResolvedSpec.from_dict(spec)
    assert typed.description == "a test" and _canonical_json(typed.to_dict()) == _canonical_json(spec)
    plain = dict(spec)
    del plain["description"]
    assert "description" not in ResolvedSpec.from_dict(plain).to_dict()


def test_from_dict_names_a_missing_or_unknown_key() -> None:
    spec = load_spec(presets.path("ramba-cpu"))
    bad = json.loads(json.dumps(spec))
    del bad["memories"]["mid"]["chunk_size"]
    with pytest.raises(SpecError, match="chunk_size"):
        ResolvedSpec.from_dict(bad)
    bad = json.loads(json.dumps(spec))
    bad["layers"][3]["colour"] = "red"
    with pytest.raises(SpecError) as err:
        ResolvedSpec.from_dict(bad)
    assert err.value.path == "layers[3].colour"


def test_the_model_builds_the_same_from_the_dict_and_the_typed_spec() -> None:
    from hsa_core.model import HSALanguageModel

    spec = load_spec(presets.path("ramba-cpu"))
    torch.manual_seed(0)
    a = HSALanguageModel.from_spec(spec)
    torch.manual_seed(0)
    b = HSALanguageModel.from_spec(ResolvedSpec.from_dict(spec))
    assert a.spec == b.spec == spec and a.layout == b.layout
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
