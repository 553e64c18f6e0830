"""Layout -> canonical spec: defaults, wiring, idempotence, overrides, and one test per error class."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsa_core.errors import SpecError
from hsa_core.layout import apply_overrides, dump_spec, load_spec, resolve
from hsa_core.plugins import PluginHost
from tests.optional_deps import skip_unless_required

PRESETS = Path(__file__).resolve().parents[2] / "hsa_core" / "presets"


def test_ramba_canonical(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    spec = resolve(ramba(), host=host)
    assert set(spec) == {"version", "name", "model", "memories", "retrieval", "layers"}
    assert spec["model"] == {"vocab_size": 50280, "d_model": 1024, "tie_embeddings": True, "norm_eps": 1e-5,
                             "mlp_hidden": 2752, "init_std": 0.02, "init": "toolkit"}
    layers = spec["layers"]
    assert len(layers) == 51
    assert [layer["kind"] for layer in layers].count("mamba2") == 48
    assert layers[0] == {"index": 0, "kind": "mamba2", "role": "backbone", "plugin": "toy_plugin",
                         "options": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64}, "mlp": False}
    hsa = [layer for layer in layers if layer["kind"] == "hsa"]
    assert [layer["index"] for layer in hsa] == [24, 33, 42]
    assert hsa[0] == {"index": 24, "kind": "hsa", "role": "retrieval", "plugin": "hsa_builtin_layers",
                      "options": {"num_heads": 16, "qk_norm": False, "sink": False, "norm_eps": 1e-5,
                                  "residual": True}, "mlp": False,
                      "selection": "mid_sel", "memory": "mid"}
    assert spec["memories"]["mid"] == {
        "after_layer": 24, "chunk_size": 64, "kv_heads": 1, "head_dim": 64, "landmark": "cls",
        "landmark_dim": 1024, "retrieval_heads": 1,
        "encoder": {"layers": 1, "heads": 16, "kv_heads": 16, "qkv_bias": False, "mlp_hidden": 2752,
                    "mlp_rounding": "up"},
        "chunk_norm": True, "k_norm": False, "norm_eps": 1e-5, "offload": False}
    assert spec["retrieval"]["mid_sel"] == {
        "memory": "mid", "topk": 8, "retrieval_dim": 1024, "retrieval_heads": 1, "weighting": "stick_breaking",
        "shared": True, "gumbel": False, "window": None, "landmark_norm": False, "norm_eps": 1e-5}


def test_idempotent_and_json_yaml_round_trip(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    spec = resolve(ramba(), host=host)
    assert resolve(spec, host=host) == spec
    assert resolve(json.loads(json.dumps(spec)), host=host) == spec
    text = dump_spec(spec)
    assert yaml.safe_load(text) == spec
    # one line per layer keeps a 51-layer spec readable
    assert sum(line.startswith("- {index:") for line in text.splitlines()) == 51


def test_input_is_not_modified(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    raw = ramba()
    before = copy.deepcopy(raw)
    resolve(raw, host=host)
    assert raw == before


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.yaml")))
def test_presets_resolve(preset: str) -> None:
    from hsa_core.plugins import backbones

    raw = yaml.safe_load((PRESETS / preset).read_text())
    kinds = {v if isinstance(v, str) else v["kind"] for v in raw.get("symbols", {}).values()} - {"hsa"}
    missing = kinds - set(backbones().names())
    if missing:
        skip_unless_required(f"backbones not registered here: {sorted(missing)}")
    spec = load_spec(PRESETS / preset)
    assert resolve(spec) == spec
    assert yaml.safe_load(dump_spec(spec)) == spec


def test_explicit_list_defaults_symbols_overrides(host: PluginHost) -> None:
    raw = {
        "model": {"vocab_size": 100, "d_model": 64},
        "defaults": {"toy": {"expand": 3, "mlp": True}},
        "memories": {"m": {"after_layer": 1, "chunk_size": 8, "head_dim": 16, "encoder": {"layers": 0}}},
        "retrieval": {"s": {"memory": "m", "topk": 2}},
        "symbols": {"T": "toy", "H": {"kind": "hsa", "selection": "s", "num_heads": 2}},
        "layers": ["T", "H", {"kind": "toy", "act": "gelu"}, {"kind": "T", "mlp": False}, "T*2"],
        "overrides": {4: {"expand": 5}, "3-4": {"gated": True}},
    }
    spec = resolve(raw, host=host)
    layers = spec["layers"]
    assert [layer["kind"] for layer in layers] == ["toy", "hsa", "toy", "toy", "toy", "toy"]
    assert [layer["options"]["expand"] for layer in layers if layer["kind"] == "toy"] == [3, 3, 3, 5, 3]
    assert layers[2]["options"]["act"] == "gelu"
    assert [layer["mlp"] for layer in layers] == [True, False, True, False, True, True]
    assert [layer["options"]["gated"] for layer in layers if layer["kind"] == "toy"] == [False, False, True,
                                                                                            True, False]
    assert layers[0]["options"]["scale"] == 1.0 and isinstance(layers[0]["options"]["scale"], float)
    mem = spec["memories"]["m"]
    assert mem["landmark"] == "mean" and mem["landmark_dim"] == 64 and mem["retrieval_heads"] == 1
    assert spec["retrieval"]["s"]["retrieval_dim"] == 64
    assert spec["model"]["mlp_hidden"] == 192
    assert resolve(spec, host=host) == spec


def test_yaml_exponent_without_dot_is_a_number(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    raw = yaml.safe_load("model: {vocab_size: 10, d_model: 64, norm_eps: 1e-6}\nlayers: toy\n")
    assert raw["model"]["norm_eps"] == "1e-6"  # PyYAML (YAML 1.1) reads it as a string
    assert resolve(raw, host=host)["model"]["norm_eps"] == 1e-6
    spec = load_spec(ramba(), overrides=["model.init_std=2e-2"], host=host)
    assert spec["model"]["init_std"] == 0.02


def test_selection_dims_come_from_memory_or_selection(host: PluginHost) -> None:
    base = {"model": {"vocab_size": 10, "d_model": 64}, "layers": "H",
            "symbols": {"H": {"kind": "hsa", "selection": "s", "num_heads": 4}}}
    spec = resolve({**base, "memories": {"m": {"after_layer": 0, "kv_heads": 2, "landmark_dim": 32}},
                    "retrieval": {"s": {"memory": "m", "retrieval_heads": 2}}}, host=host)
    assert spec["retrieval"]["s"]["retrieval_dim"] == 32 and spec["memories"]["m"]["retrieval_heads"] == 2
    spec = resolve({**base, "memories": {"m": {"after_layer": 0}},
                    "retrieval": {"s": {"memory": "m", "retrieval_dim": 48}}}, host=host)
    assert spec["memories"]["m"]["landmark_dim"] == 48


def test_set_overrides(host: PluginHost, ramba: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(ramba()))
    spec = load_spec(path, overrides=["model.d_model=256", "memories.mid.chunk_size=32",
                                      "retrieval.mid_sel.retrieval_dim=256", "layers=M*2 H M",
                                      "memories.mid.after_layer=2", "overrides.3.expand=4",
                                      "symbols.H.qk_norm=true"], host=host)
    assert spec["model"]["d_model"] == 256
    assert spec["memories"]["mid"]["chunk_size"] == 32
    assert [layer["kind"] for layer in spec["layers"]] == ["mamba2", "mamba2", "hsa", "mamba2"]
    assert spec["layers"][3]["options"]["expand"] == 4
    assert spec["layers"][2]["options"]["qk_norm"] is True
    raw = apply_overrides({"layers": ["A", "B"]}, ["layers.1=C"])
    assert raw == {"layers": ["A", "C"]}


def test_set_override_errors(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(SpecError, match=r"expected key\.path=value"):
        load_spec(ramba(), overrides=["model.d_model"], host=host)
    with pytest.raises(SpecError) as info:
        load_spec(ramba(), overrides=["model.d_model=big"], host=host)
    assert str(info.value) == "model.d_model: expected a positive integer, got 'big'"
    with pytest.raises(SpecError) as info:
        load_spec(ramba(), overrides=["symbols.M.expand=4"], host=host)
    assert info.value.path == "symbols.M"


def test_file_errors_carry_source(host: PluginHost, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 1\nlayers: [")
    with pytest.raises(SpecError) as info:
        load_spec(bad, host=host)
    assert str(info.value).startswith(f"{bad}: invalid YAML at line")
    with pytest.raises(SpecError, match="cannot read layout file"):
        load_spec(tmp_path / "missing.yaml", host=host)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model: {vocab_size: 10, d_model: big}\nlayers: toy\n")
    with pytest.raises(SpecError) as info:
        load_spec(wrong, host=host)
    assert str(info.value) == f"{wrong}: model.d_model: expected a positive integer, got 'big'"
    assert info.value.path == "model.d_model"


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    if value is _DELETE:
        d.pop(last)
    else:
        d[last] = value


_DELETE = object()

# (changes as {dotted key: value}, expected error path, expected message fragment)
ERROR_CASES: list[tuple[dict[str, Any], str, str]] = [
    # unknown keys / options
    ({"modle": {}}, "modle", "unknown key; did you mean 'model'? (allowed: version, name"),
    ({"model.width": 3}, "model.width", "unknown key (allowed: vocab_size, d_model, tie_embeddings"),
    ({"defaults.mamba2.expnd": 2}, "defaults.mamba2.expnd", "unknown option for 'mamba2'; did you mean 'expand'? "
                                                      "(allowed: d_state, d_conv, expand, headdim)"),
    ({"symbols.H.heads": 4}, "symbols.H.heads",
     "unknown option for 'hsa'; did you mean 'num_heads'? (allowed: num_heads, qk_norm, sink, norm_eps, residual)"),
    ({"layers": ["M", {"kind": "H", "heads": 2}]}, "layers[1].heads", "unknown option for 'hsa'"),
    ({"memories.mid.chunk": 64}, "memories.mid.chunk", "did you mean 'chunk_size'?"),
    ({"memories.mid.encoder.depth": 2}, "memories.mid.encoder.depth",
     "allowed: layers, heads, kv_heads, qkv_bias, mlp_hidden, mlp_rounding"),
    ({"retrieval.mid_sel.top_k": 8}, "retrieval.mid_sel.top_k", "did you mean 'topk'?"),
    ({"overrides": {"30": {"expnd": 4}}}, "overrides.30.expnd", "unknown option for 'mamba2'"),
    # unknown kinds
    ({"symbols.M": "mamaba2"}, "symbols.M", "unknown kind 'mamaba2'; did you mean 'mamba2'?"),
    ({"symbols.H.kind": "hsaa"}, "symbols.H.kind", "unknown kind 'hsaa'; did you mean 'hsa'"),
    ({"defaults.mamba3": {}}, "defaults.mamba3", "unknown kind 'mamba3'"),
    ({"layers": "M*24 | (H Q*8)*3"}, "layers", "unknown symbol 'Q' at column 11"),
    ({"layers": ["M", {"kind": "rnnx"}]}, "layers[1].kind", "unknown kind 'rnnx'"),
    # bad references
    ({"symbols.H.selection": "mid2"}, "layers[24].selection", "unknown 'mid2' (from symbol 'H'); defined: mid_sel"),
    ({"symbols.H.selection": _DELETE}, "layers[24].selection", "missing"),
    ({"retrieval.mid_sel.memory": "low"}, "retrieval.mid_sel.memory", "unknown 'low'; defined: mid"),
    ({"symbols.H.memory": "other"}, "layers[24].memory", "disagrees with the memory of selection 'mid_sel'"),
    ({"symbols.M": {"kind": "mamba2", "selection": "mid_sel"}}, "symbols.M.selection",
     "only retrieval layers read a memory"),
    # head ratios
    ({"memories.mid.kv_heads": 3}, "layers[24].num_heads", "16 (from symbol 'H') is not a multiple of "
                                                           "memories.mid.kv_heads (3)"),
    ({"memories.mid.kv_heads": 2, "retrieval.mid_sel.retrieval_heads": 4}, "memories.mid.retrieval_heads",
     "must be 1 or kv_heads (2), got 4"),
    ({"memories.mid.retrieval_heads": 2}, "retrieval.mid_sel.retrieval_heads", "1 disagrees with "
                                                                             "memories.mid.retrieval_heads (2)"),
    ({"retrieval.mid_sel.retrieval_dim": 1020, "memories.mid.kv_heads": 8,
      "retrieval.mid_sel.retrieval_heads": 8}, "memories.mid.landmark_dim", "not a multiple of retrieval_heads"),
    # patterns
    ({"layers": "M*24 | (H M*8"}, "layers", "unbalanced '(' at column 8"),
    ({"layers": "M*24 | H M*8)*3"}, "layers", "unbalanced ')' at column 13"),
    ({"layers": ["M*24", "(H"]}, "layers[1]", "unbalanced '(' at column 1"),
    ({"layers": 12}, "layers", "expected a pattern string or a list, got 12"),
    ({"layers": []}, "layers", "the layer list is empty"),
    ({"layers": _DELETE}, "layers", "missing (required)"),
    # types
    ({"model.d_model": "big"}, "model.d_model", "expected a positive integer, got 'big'"),
    ({"model.vocab_size": 0}, "model.vocab_size", "expected a positive integer, got 0"),
    ({"model.d_model": True}, "model.d_model", "expected a positive integer, got True"),
    ({"model.d_model": _DELETE}, "model.d_model", "missing (required)"),
    ({"model.tie_embeddings": "yes"}, "model.tie_embeddings", "expected true or false, got 'yes'"),
    ({"model.norm_eps": -1}, "model.norm_eps", "expected a positive number, got -1"),
    ({"model": [1, 2]}, "model", "expected a mapping, got list [1, 2]"),
    ({"memories.mid.chunk_size": 6.5}, "memories.mid.chunk_size", "expected a positive integer, got 6.5"),
    ({"memories.mid.landmark": "max"}, "memories.mid.landmark", "expected one of cls, mean, got 'max'"),
    ({"memories.mid.encoder": {"layers": 0}}, "memories.mid.landmark", "'cls' needs a chunk encoder"),
    ({"memories.mid.encoder.heads": 7}, "memories.mid.encoder.heads", "7 does not divide model.d_model (1024)"),
    ({"memories.mid.encoder.kv_heads": 3}, "memories.mid.encoder.kv_heads", "3 does not divide encoder.heads (16)"),
    ({"memories.mid.encoder.mlp_rounding": "near"}, "memories.mid.encoder.mlp_rounding",
     "expected one of up, down, got 'near'"),
    ({"memories.mid.encoder.qkv_bias": "yes"}, "memories.mid.encoder.qkv_bias", "expected true or false"),
    ({"memories.mid.norm_eps": 0}, "memories.mid.norm_eps", "expected a positive number, got 0"),
    ({"retrieval.mid_sel.landmark_norm": 1}, "retrieval.mid_sel.landmark_norm", "expected true or false"),
    ({"model.init": "random"}, "model.init", "expected one of toolkit, published, got 'random'"),
    ({"symbols.H.norm_eps": "small"}, "layers[24].norm_eps", "expected a positive number, got 'small'"),
    ({"retrieval.mid_sel.weighting": "sum"}, "retrieval.mid_sel.weighting",
     "expected one of stick_breaking, softmax, got 'sum'"),
    ({"retrieval.mid_sel.shared": "no"}, "retrieval.mid_sel.shared", "expected true or false"),
    ({"retrieval.mid_sel.window": -4}, "retrieval.mid_sel.window", "expected a positive integer or null"),
    ({"symbols.H.qk_norm": 1}, "symbols.H.qk_norm", "expected true or false, got 1"),
    ({"defaults.mamba2.expand": "2"}, "defaults.mamba2.expand", "expected an integer, got '2'"),
    ({"overrides": {"30": {"mlp": "yes"}}}, "overrides.30.mlp", "expected true or false"),
    ({"layers": ["M", {"kind": "mamba2", "d_state": 1.5}]}, "layers[1].d_state", "expected an integer, got 1.5"),
    ({"version": 2}, "version", "unsupported layout version 2"),
    ({"name": 5}, "name", "expected a string, got 5"),
    ({"symbols.2x": "mamba2"}, "symbols.2x", "a symbol name is letters"),
    # memory placement
    ({"memories.mid.after_layer": 60}, "memories.mid.after_layer", "60 is out of range: the model has 51 layers"),
    ({"memories.mid.after_layer": 30}, "memories.mid.after_layer",
     "30 is after layer 24 (hsa), which reads this memory through 'mid_sel'"),
    ({"layers": "H M*24 (H M*8)*3"}, "memories.mid.after_layer", "24 is after layer 0 (hsa)"),
    ({"memories.mid.after_layer": -1}, "memories.mid.after_layer", "expected an integer >= 0, got -1"),
    ({"overrides": {"99": {"expand": 4}}}, "overrides.99", "layer index 99 is out of range (the model has 51"),
    ({"overrides": {"x": {}}}, "overrides.x", "expected a layer index"),
]


@pytest.mark.parametrize(("changes", "path", "message"), ERROR_CASES,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(ERROR_CASES)])
def test_errors_are_path_precise(host: PluginHost, ramba: Callable[..., dict[str, Any]],
                                 changes: dict[str, Any], path: str, message: str) -> None:
    raw = ramba()
    for key, value in changes.items():
        _set(raw, key, value)
    with pytest.raises(SpecError) as info:
        resolve(raw, host=host)
    assert info.value.path == path, str(info.value)
    assert message in info.value.message, str(info.value)
    assert "\n" not in str(info.value)


def test_top_level_must_be_mapping(host: PluginHost) -> None:
    with pytest.raises(SpecError, match="mapping at the top level"):
        resolve(["layers"], host=host)  # type: ignore[arg-type]


def test_canonical_layer_checks(host: PluginHost, ramba: Callable[..., dict[str, Any]]) -> None:
    spec = resolve(ramba(), host=host)
    spec["layers"][3]["index"] = 4
    with pytest.raises(SpecError) as info:
        resolve(spec, host=host)
    assert info.value.path == "layers[3].index"
    spec = resolve(ramba(), host=host)
    spec["layers"][24]["options"]["kv_heads"] = 2
    with pytest.raises(SpecError) as info:
        resolve(spec, host=host)
    assert info.value.path == "layers[24].kv_heads"
    spec = resolve(ramba(), host=host)
    spec["layers"][5]["expand"] = 4
    with pytest.raises(SpecError, match="given both inside and outside 'options'"):
        resolve(spec, host=host)
