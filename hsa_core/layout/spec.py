"""Layout YAML -> canonical spec: parsing, defaults, wiring and strict, path-precise validation.

The canonical spec is a plain JSON-able ``dict``::

    {"version": 1, "name": ..., "description": ...,
     "model": {vocab_size, d_model, tie_embeddings, norm_eps, mlp_hidden, init_std, init},
     "memories": {name: {after_layer, chunk_size, kv_heads, head_dim, landmark, landmark_dim,
                         retrieval_heads, encoder: {layers, heads, kv_heads, qkv_bias, mlp_hidden,
                         mlp_rounding}, chunk_norm, k_norm, norm_eps, offload}},
     "retrieval": {name: {memory, topk, retrieval_dim, retrieval_heads, weighting, shared, gumbel, window,
                          landmark_norm, norm_eps}},
     "layers": [{index, kind, role: backbone|retrieval, plugin, options: {...}, mlp,
                 selection, memory}, ...]}     # selection/memory only on retrieval layers

It is itself a valid layout (``resolve(resolve(x)) == resolve(x)``): ``defaults``, ``symbols`` and
``overrides`` are folded into the layers and dropped. :class:`~hsa_core.layout.typed.ResolvedSpec` holds
the same content as frozen dataclasses (``from_dict`` / ``to_dict``, same keys in the same order). Every error is a
:class:`~hsa_core.errors.SpecError` whose ``path`` points at the offending key.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from ..limits import MAX_LAYERS
from ..modules.chunk_memory import LANDMARKS
from ..modules.common import MLP_ROUNDINGS, swiglu_hidden
from ..modules.init import INIT_SCHEMES
from ..ops import WEIGHTINGS
from ..plugins import PluginHost, get_host
from .checks import (
    REQUIRED,
    as_bool,
    as_choice,
    as_float,
    as_int,
    as_mapping,
    as_str,
    check_keys,
    check_option,
    fill_defaults,
    known_names,
    show,
)
from .pattern import expand_pattern

__all__ = [
    "FORMAT_VERSION",
    "MEMORY_DEFAULTS",
    "MODEL_DEFAULTS",
    "SELECTION_DEFAULTS",
    "resolve",
    "swiglu_hidden",
]

FORMAT_VERSION = 1

TOP_LEVEL_KEYS = ("version", "name", "description", "model", "defaults", "memories", "retrieval",
                  "symbols", "layers", "overrides")


MODEL_DEFAULTS: dict[str, Any] = {
    "vocab_size": REQUIRED,
    "d_model": REQUIRED,
    "tie_embeddings": True,
    "norm_eps": 1e-5,
    "mlp_hidden": None,      # None -> swiglu_hidden(d_model)
    "init_std": 0.02,        # embedding (and untied head) init; mixers initialise themselves
    "init": "toolkit",       # initialisation scheme (hsa_core.modules.init): toolkit | published
}

MEMORY_DEFAULTS: dict[str, Any] = {
    "after_layer": REQUIRED,
    "chunk_size": 64,
    "kv_heads": 1,
    "head_dim": 64,
    "landmark": None,        # None -> "cls" with an encoder, "mean" without
    "landmark_dim": None,    # None -> the retrieval_dim of the selections reading it, else d_model
    "retrieval_heads": None,  # None -> the retrieval_heads of the selections reading it, else 1
    "encoder": None,
    "chunk_norm": True,
    "k_norm": False,
    "norm_eps": None,        # None -> model.norm_eps (chunk norm, encoder norms, k_norm)
    "offload": False,        # inference: K/V of complete chunks in host memory, landmarks on the device
}

ENCODER_DEFAULTS: dict[str, Any] = {
    "layers": 1,
    "heads": None,           # None -> d_model / 64 (or the largest count dividing d_model)
    "kv_heads": None,        # None -> heads (no GQA); the published default config uses 4 of 16
    "qkv_bias": False,       # biases on the q/k/v projections (the published encoder has them)
    "mlp_hidden": None,      # None -> 8/3 d rounded to a multiple of 64 as mlp_rounding says
    "mlp_rounding": "up",    # up: ceil (toolkit default); down: floor (the published encoder)
}

SELECTION_DEFAULTS: dict[str, Any] = {
    "memory": REQUIRED,
    "topk": 8,
    "retrieval_dim": None,   # None -> the memory's landmark_dim
    "retrieval_heads": None,  # None -> the memory's retrieval_heads
    "weighting": "stick_breaking",
    "shared": True,
    "gumbel": False,
    "window": None,
    "landmark_norm": False,  # per-head RMSNorm on retrieval queries and landmarks before scoring
    "norm_eps": None,        # None -> model.norm_eps (the retrieval query's RMSNorm)
}


# Keys of a layer mapping that are not kind options.
_LAYER_META_KEYS = ("kind", "options", "mlp", "selection", "memory", "index", "plugin", "role")
# Options a retrieval layer gets from its memory rather than from the layout.
_FROM_MEMORY = ("kv_heads", "head_dim", "chunk_size")


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------

class _Kinds:
    """Backbone and retrieval-layer kinds of one plugin host."""

    def __init__(self, host: PluginHost) -> None:
        self.backbones = host.backbone_registry()
        self.layers = host.retrieval_registry()

    def names(self) -> list[str]:
        return sorted(set(self.backbones.names()) | set(self.layers.names()))

    def plugins(self) -> set[str]:
        """Names of the plugins that registered at least one kind."""
        return {e.plugin for _, e in [*self.backbones.items(), *self.layers.items()]}

    def lookup(self, path: str, kind: Any) -> tuple[str, str, dict[str, Any], Any]:
        """``(role, plugin, defaults, factory)`` of ``kind``, or a did-you-mean error at ``path``."""
        if not isinstance(kind, str):
            raise SpecError(path, f"expected a kind name, got {show(kind)}")
        in_b, in_l = kind in self.backbones, kind in self.layers
        if in_b and in_l:
            raise SpecError(path, f"kind {kind!r} is registered both as a backbone (plugin "
                                  f"'{self.backbones.entry(kind).plugin}') and as a retrieval layer "
                                  f"(plugin '{self.layers.entry(kind).plugin}')")
        if in_b:
            e = self.backbones.entry(kind)
            return "backbone", e.plugin, dict(e.info.defaults), e.info.factory
        if in_l:
            e = self.layers.entry(kind)
            return "retrieval", e.plugin, dict(e.info.defaults), e.info.factory
        known = self.names()
        close = difflib.get_close_matches(kind, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise SpecError(path, f"unknown kind {kind!r}{hint} (known: {', '.join(known) or 'none'})")


# --------------------------------------------------------------------------------------------------
# resolve
# --------------------------------------------------------------------------------------------------

def _resolve_model(raw: Any) -> dict[str, Any]:
    m = fill_defaults("model", as_mapping("model", raw, allow_none=False) if raw is not None else _missing("model"),
              MODEL_DEFAULTS)
    m["vocab_size"] = as_int("model.vocab_size", m["vocab_size"])
    m["d_model"] = as_int("model.d_model", m["d_model"])
    m["tie_embeddings"] = as_bool("model.tie_embeddings", m["tie_embeddings"])
    m["norm_eps"] = as_float("model.norm_eps", m["norm_eps"])
    hidden = as_int("model.mlp_hidden", m["mlp_hidden"], allow_none=True)
    m["mlp_hidden"] = swiglu_hidden(m["d_model"]) if hidden is None else hidden
    m["init_std"] = as_float("model.init_std", m["init_std"])
    m["init"] = as_choice("model.init", m["init"], INIT_SCHEMES)
    return m


def _missing(path: str) -> dict[str, Any]:
    raise SpecError(path, "missing (required)")


def _default_encoder_heads(d_model: int) -> int:
    # Head width 64 where the width allows it; else the largest head count that divides d_model.
    for heads in range(max(1, d_model // 64), 0, -1):
        if d_model % heads == 0:
            return heads
    return 1


def _eps(path: str, value: Any, model_eps: float) -> float:
    return model_eps if value is None else as_float(path, value)


def _resolve_memory_base(name: str, raw: Any, d_model: int, model_eps: float) -> dict[str, Any]:
    p = f"memories.{name}"
    m = fill_defaults(p, as_mapping(p, raw, allow_none=False), MEMORY_DEFAULTS)
    m["after_layer"] = as_int(f"{p}.after_layer", m["after_layer"], minimum=0)
    for key in ("chunk_size", "kv_heads", "head_dim"):
        m[key] = as_int(f"{p}.{key}", m[key])
    m["landmark_dim"] = as_int(f"{p}.landmark_dim", m["landmark_dim"], allow_none=True)
    m["retrieval_heads"] = as_int(f"{p}.retrieval_heads", m["retrieval_heads"], allow_none=True)
    m["chunk_norm"] = as_bool(f"{p}.chunk_norm", m["chunk_norm"])
    m["k_norm"] = as_bool(f"{p}.k_norm", m["k_norm"])
    m["offload"] = as_bool(f"{p}.offload", m["offload"])
    m["norm_eps"] = _eps(f"{p}.norm_eps", m["norm_eps"], model_eps)
    enc = fill_defaults(f"{p}.encoder", as_mapping(f"{p}.encoder", m["encoder"]), ENCODER_DEFAULTS)
    enc["layers"] = as_int(f"{p}.encoder.layers", enc["layers"], minimum=0)
    heads = as_int(f"{p}.encoder.heads", enc["heads"], allow_none=True)
    enc["heads"] = _default_encoder_heads(d_model) if heads is None else heads
    if d_model % enc["heads"]:
        raise SpecError(f"{p}.encoder.heads", f"{enc['heads']} does not divide model.d_model ({d_model})")
    kv = as_int(f"{p}.encoder.kv_heads", enc["kv_heads"], allow_none=True)
    enc["kv_heads"] = enc["heads"] if kv is None else kv
    if enc["heads"] % enc["kv_heads"]:
        raise SpecError(f"{p}.encoder.kv_heads", f"{enc['kv_heads']} does not divide encoder.heads ({enc['heads']})")
    enc["qkv_bias"] = as_bool(f"{p}.encoder.qkv_bias", enc["qkv_bias"])
    enc["mlp_rounding"] = as_choice(f"{p}.encoder.mlp_rounding", enc["mlp_rounding"], MLP_ROUNDINGS)
    hidden = as_int(f"{p}.encoder.mlp_hidden", enc["mlp_hidden"], allow_none=True)
    enc["mlp_hidden"] = swiglu_hidden(d_model, rounding=enc["mlp_rounding"]) if hidden is None else hidden
    m["encoder"] = enc
    if m["landmark"] is None:
        m["landmark"] = "cls" if enc["layers"] > 0 else "mean"
    m["landmark"] = as_choice(f"{p}.landmark", m["landmark"], LANDMARKS)
    if m["landmark"] == "cls" and enc["layers"] == 0:
        raise SpecError(f"{p}.landmark", "'cls' needs a chunk encoder (encoder.layers >= 1); use 'mean' "
                                         "or add an encoder layer")
    return m


def _resolve_selection_base(name: str, raw: Any, memories: Mapping[str, Any], model_eps: float) -> dict[str, Any]:
    p = f"retrieval.{name}"
    s = fill_defaults(p, as_mapping(p, raw, allow_none=False), SELECTION_DEFAULTS)
    mem = as_str(f"{p}.memory", s["memory"])
    if mem not in memories:
        raise SpecError(f"{p}.memory", f"unknown {mem!r}; defined: {known_names(memories)}")
    s["topk"] = as_int(f"{p}.topk", s["topk"])
    s["retrieval_dim"] = as_int(f"{p}.retrieval_dim", s["retrieval_dim"], allow_none=True)
    s["retrieval_heads"] = as_int(f"{p}.retrieval_heads", s["retrieval_heads"], allow_none=True)
    s["weighting"] = as_choice(f"{p}.weighting", s["weighting"], WEIGHTINGS)
    s["shared"] = as_bool(f"{p}.shared", s["shared"])
    s["gumbel"] = as_bool(f"{p}.gumbel", s["gumbel"])
    s["window"] = as_int(f"{p}.window", s["window"], allow_none=True)
    s["landmark_norm"] = as_bool(f"{p}.landmark_norm", s["landmark_norm"])
    s["norm_eps"] = _eps(f"{p}.norm_eps", s["norm_eps"], model_eps)
    return s


def _wire_retrieval_dims(memories: dict[str, dict[str, Any]], selections: dict[str, dict[str, Any]],
                         d_model: int) -> None:
    """Landmarks are per memory, so every selection over a memory shares its (d_r, H_r).

    An explicit value on the memory wins; otherwise the selections' explicit values (which must
    agree) set it; otherwise d_r = d_model and H_r = 1 (RAMba's choice).
    """
    for key, mem_key, fallback in (("retrieval_dim", "landmark_dim", d_model),
                                   ("retrieval_heads", "retrieval_heads", 1)):
        for mname, mem in memories.items():
            value, source = mem[mem_key], f"memories.{mname}.{mem_key}"
            for sname, sel in selections.items():
                if sel["memory"] != mname or sel[key] is None:
                    continue
                if value is None:
                    value, source = sel[key], f"retrieval.{sname}.{key}"
                elif sel[key] != value:
                    raise SpecError(f"retrieval.{sname}.{key}",
                                    f"{sel[key]} disagrees with {source} ({value}); selections over one "
                                    f"memory share its landmarks, so they must use the same {key}")
            mem[mem_key] = fallback if value is None else value
        for sel in selections.values():
            sel[key] = memories[sel["memory"]][mem_key]
    for mname, mem in memories.items():
        hr, kv = mem["retrieval_heads"], mem["kv_heads"]
        if hr not in (1, kv):
            raise SpecError(f"memories.{mname}.retrieval_heads",
                            f"must be 1 or kv_heads ({kv}), got {hr}")
        if mem["landmark_dim"] % hr:
            raise SpecError(f"memories.{mname}.landmark_dim",
                            f"{mem['landmark_dim']} is not a multiple of retrieval_heads ({hr})")
    for sname, sel in selections.items():
        # Report head-ratio problems at the selection too when that is where the value was written.
        mem = memories[sel["memory"]]
        if sel["retrieval_heads"] not in (1, mem["kv_heads"]):  # pragma: no cover - caught above
            raise SpecError(f"retrieval.{sname}.retrieval_heads",
                            f"must be 1 or kv_heads ({mem['kv_heads']})")


def _check_partial(path: str, m: Mapping[str, Any], kind: str, kinds: _Kinds) -> None:
    """Check keys and value types of a (partial) layer mapping of ``kind`` where it is written
    (a ``defaults`` entry, a symbol, a list item, an override), so the error path points there."""
    role, _plugin, registered, _factory = kinds.lookup(path, kind)
    for key, value in m.items():
        where = f"{path}.{key}"
        if key == "kind":
            continue
        if key == "mlp":
            as_bool(where, value)
        elif key in ("selection", "memory"):
            if role == "backbone" and value is not None:
                raise SpecError(where, f"only retrieval layers read a memory; '{kind}' is a backbone")
            as_str(where, value, allow_none=True)
        elif key == "index":
            as_int(where, value, minimum=0)
        elif key in ("plugin", "role"):
            as_str(where, value, allow_none=True)
        elif key in registered:
            check_option(where, value, registered[key])
        else:
            check_keys(path, {key: None}, list(registered), what=f"option for '{kind}'")


def _layer_mapping(path: str, value: Any, symbols: Mapping[str, dict[str, Any]],
                   kinds: _Kinds) -> tuple[dict[str, Any], str | None]:
    """A layer item (symbol name, kind name or mapping) -> (flat mapping with 'kind', symbol used)."""
    if isinstance(value, str):
        if value in symbols:
            return copy.deepcopy(symbols[value]), value
        kinds.lookup(path, value)
        return {"kind": value}, None
    m = as_mapping(path, value, allow_none=False)
    if "kind" not in m:
        raise SpecError(f"{path}.kind", "missing (required)")
    symbol = None
    if isinstance(m["kind"], str) and m["kind"] in symbols:
        symbol = m["kind"]
        base = copy.deepcopy(symbols[symbol])
        rest = _flatten(path, {k: v for k, v in m.items() if k != "kind"})
        _check_partial(path, rest, base["kind"], kinds)
        return _merge_layer(base, rest), symbol
    _lookup_recorded(f"{path}.kind", m, kinds)
    flat = _flatten(path, m)
    _check_partial(path, flat, m["kind"], kinds)
    return flat, symbol


def _lookup_recorded(path: str, m: Mapping[str, Any], kinds: _Kinds) -> None:
    """Look up ``m['kind']``; when it is unknown and ``m`` records the plugin that provided it (a
    canonical spec, e.g. a saved model's ``config.json``), name that plugin in the error."""
    try:
        kinds.lookup(path, m["kind"])
    except SpecError:
        plugin = m.get("plugin")
        if isinstance(plugin, str) and plugin and isinstance(m["kind"], str) and plugin not in kinds.plugins():
            raise SpecError(path, f"kind {show(m['kind'])} comes from plugin {show(plugin)} (recorded in this "
                                  f"layout), which is not installed; install the package that provides plugin "
                                  f"{show(plugin)} (or load its file with --plugin)") from None
        raise


def _flatten(path: str, m: Mapping[str, Any]) -> dict[str, Any]:
    """Fold a nested ``options`` mapping into flat keys (the canonical form nests options)."""
    out = {k: v for k, v in m.items() if k != "options"}
    if "options" in m:
        for k, v in as_mapping(f"{path}.options", m["options"]).items():
            if k in out:
                raise SpecError(f"{path}.options.{k}", "given both inside and outside 'options'")
            out[k] = v
    return out


def _merge_layer(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    out.update(top)
    return out


def _resolve_symbols(raw: Any, kinds: _Kinds) -> dict[str, dict[str, Any]]:
    symbols = {}
    for name, value in as_mapping("symbols", raw).items():
        p = f"symbols.{name}"
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(
                c.isalnum() or c in "_-" for c in name):
            raise SpecError(p, "a symbol name is letters, digits, '_' or '-', starting with a letter")
        if isinstance(value, str):
            kinds.lookup(p, value)
            symbols[name] = {"kind": value}
        else:
            m = _flatten(p, as_mapping(p, value, allow_none=False))
            if "kind" not in m:
                raise SpecError(f"{p}.kind", "missing (required)")
            kinds.lookup(f"{p}.kind", m["kind"])
            _check_partial(p, m, m["kind"], kinds)
            symbols[name] = m
    return symbols


def _expand_layers(raw: Any, symbols: Mapping[str, dict[str, Any]],
                   kinds: _Kinds) -> list[tuple[dict[str, Any], str | None]]:
    """``layers`` (pattern string or list) -> one (flat mapping, symbol) per layer."""
    if raw is None:
        raise SpecError("layers", "missing (required)")
    out: list[tuple[dict[str, Any], str | None]] = []
    if isinstance(raw, str):
        for name, col in expand_pattern(raw, "layers"):
            if name not in symbols and name not in kinds.names():
                close = difflib.get_close_matches(name, list(symbols) + kinds.names(), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError("layers", f"unknown symbol {name!r} at column {col}{hint} "
                                          f"(symbols: {known_names(symbols)}; kinds may be used directly too)")
            out.append(_layer_mapping("layers", name, symbols, kinds))
        return out
    if not isinstance(raw, list):
        raise SpecError("layers", f"expected a pattern string or a list, got {show(raw)}")
    if not raw:
        raise SpecError("layers", "the layer list is empty")
    for i, item in enumerate(raw):
        p = f"layers[{i}]"
        if len(out) >= MAX_LAYERS:
            raise SpecError(p, f"the layer list expands to more than {MAX_LAYERS:,} layers (the limit)")
        if isinstance(item, str) and item not in symbols and item not in kinds.names():
            # A string item may itself be a small pattern ("M*24").
            names = expand_pattern(item, p, limit=MAX_LAYERS - len(out))
            for name, col in names:
                if name not in symbols and name not in kinds.names():
                    raise SpecError(p, f"unknown symbol {name!r} at column {col} "
                                       f"(symbols: {known_names(symbols)})")
                out.append(_layer_mapping(p, name, symbols, kinds))
        else:
            out.append(_layer_mapping(p, item, symbols, kinds))
    return out


def _resolve_overrides(raw: Any, n_layers: int) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """``overrides`` -> layer index -> [(path written at, flat mapping), ...] in document order."""
    out: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for key, value in as_mapping("overrides", raw).items():
        p = f"overrides.{key}"
        text = str(key).strip()
        try:
            if len(text) > 40:  # no 5,000-digit index is converted
                raise ValueError(text)
            if "-" in text.lstrip("-") and not text.startswith("-"):
                a, b = (int(x) for x in text.split("-", 1))
            else:
                a = b = int(text)
        except ValueError:
            raise SpecError(p, "expected a layer index ('30') or an inclusive range ('24-31')") from None
        if b < a:
            raise SpecError(p, "empty range")
        for i in (a, b):  # both ends checked before the range is expanded
            if not 0 <= i < n_layers:
                raise SpecError(p, f"layer index {i} is out of range (the model has {n_layers} layers: "
                                   f"0..{n_layers - 1})")
        flat = _flatten(p, as_mapping(p, value, allow_none=False))
        for i in range(a, b + 1):
            out.setdefault(i, []).append((p, flat))
    return out


def _overrides_mapping(raw: Any) -> Any:
    # YAML turns `30:` into an int key; accept it as the string the schema documents.
    if isinstance(raw, Mapping):
        return {str(k): v for k, v in raw.items()}
    return raw


def resolve(raw: Mapping[str, Any], *, host: PluginHost | None = None) -> dict[str, Any]:
    """Validate a layout and return its canonical spec (see the module docstring).

    Args:
        raw: the parsed YAML (or an already canonical spec: resolving is idempotent).
        host: plugin host whose registries define the kinds (default: the process-wide one).

    Raises:
        SpecError: the first problem found, with the path of the offending key.
    """
    if not isinstance(raw, Mapping):
        raise SpecError("", f"a layout is a mapping at the top level, got {show(raw)}")
    check_keys("", raw, TOP_LEVEL_KEYS)
    kinds = _Kinds(host or get_host())

    version = raw.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SpecError("version", f"unsupported layout version {show(version)}; this toolkit reads "
                                   f"version {FORMAT_VERSION}")
    name = as_str("name", raw.get("name"), allow_none=True)
    description = as_str("description", raw.get("description"), allow_none=True)
    model = _resolve_model(raw.get("model"))
    d_model = model["d_model"]

    eps = model["norm_eps"]
    memories = {n: _resolve_memory_base(n, v, d_model, eps)
                for n, v in as_mapping("memories", raw.get("memories")).items()}
    selections = {n: _resolve_selection_base(n, v, memories, eps)
                  for n, v in as_mapping("retrieval", raw.get("retrieval")).items()}
    _wire_retrieval_dims(memories, selections, d_model)

    # Per-kind defaults: a layer mapping without 'kind' (options, and optionally mlp/selection).
    kind_defaults: dict[str, dict[str, Any]] = {}
    for kind, value in as_mapping("defaults", raw.get("defaults")).items():
        kinds.lookup(f"defaults.{kind}", kind)
        m = _flatten(f"defaults.{kind}", as_mapping(f"defaults.{kind}", value))
        if "kind" in m:
            raise SpecError(f"defaults.{kind}.kind", "defaults are per kind already; remove 'kind'")
        _check_partial(f"defaults.{kind}", m, kind, kinds)
        kind_defaults[kind] = m

    symbols = _resolve_symbols(raw.get("symbols"), kinds)
    items = _expand_layers(raw.get("layers"), symbols, kinds)
    overrides = _resolve_overrides(_overrides_mapping(raw.get("overrides")), len(items))

    layers = []
    for i, (item, symbol) in enumerate(items):
        for where, override in overrides.get(i, ()):
            _check_partial(where, override, item["kind"], kinds)
            item = _merge_layer(item, override)
        layers.append(_resolve_layer(i, item, symbol, kinds, kind_defaults, memories, selections, eps))

    n = len(layers)
    for mname, mem in memories.items():
        if mem["after_layer"] > n:
            raise SpecError(f"memories.{mname}.after_layer",
                            f"{mem['after_layer']} is out of range: the model has {n} layers, so a memory "
                            f"can be built after 0..{n} layers")
    for layer in layers:
        if layer["role"] != "retrieval":
            continue
        mem = memories[layer["memory"]]
        if mem["after_layer"] > layer["index"]:
            raise SpecError(f"memories.{layer['memory']}.after_layer",
                            f"{mem['after_layer']} is after layer {layer['index']} ({layer['kind']}), which "
                            f"reads this memory through '{layer['selection']}'; a memory must be built "
                            f"before the layers that read it (after_layer <= {layer['index']})")

    spec: dict[str, Any] = {"version": FORMAT_VERSION, "name": name}
    if description is not None:
        spec["description"] = description
    spec.update({"model": model, "memories": memories, "retrieval": selections, "layers": layers})
    return spec


def _resolve_layer(i: int, item: dict[str, Any], symbol: str | None, kinds: _Kinds,
                   kind_defaults: Mapping[str, dict[str, Any]], memories: Mapping[str, dict[str, Any]],
                   selections: Mapping[str, dict[str, Any]], model_eps: float) -> dict[str, Any]:
    p = f"layers[{i}]"
    origin = f" (from symbol '{symbol}')" if symbol else ""
    kind = item["kind"]
    role, plugin, registered, _factory = kinds.lookup(f"{p}.kind", kind)
    merged = {**kind_defaults.get(kind, {}), **item}

    if "index" in merged and merged["index"] != i:
        raise SpecError(f"{p}.index", f"says {show(merged['index'])} but the layer is at position {i}")
    for key in ("plugin", "role"):  # informational in canonical specs; recomputed from the registry
        as_str(f"{p}.{key}", merged.get(key, ""), allow_none=True)
    mlp = as_bool(f"{p}.mlp", merged.get("mlp", False))

    option_keys = [k for k in merged if k not in _LAYER_META_KEYS]
    allowed = list(registered)
    check_keys(p, {k: None for k in option_keys}, allowed, what=f"option for '{kind}'{origin}")
    options = {k: check_option(f"{p}.{k}", merged.get(k, v), v) for k, v in registered.items()}

    layer: dict[str, Any] = {"index": i, "kind": kind, "role": role, "plugin": plugin, "options": options,
                             "mlp": mlp}
    if role == "backbone":
        for key in ("selection", "memory"):
            if merged.get(key) is not None:
                raise SpecError(f"{p}.{key}", f"only retrieval layers read a memory; '{kind}' is a backbone")
        return layer

    sel_name = merged.get("selection")
    if sel_name is None:
        raise SpecError(f"{p}.selection", f"missing: a '{kind}' layer must name the selection it reads"
                                          f"{origin}; defined: {known_names(selections)}")
    if not isinstance(sel_name, str) or sel_name not in selections:
        raise SpecError(f"{p}.selection", f"unknown {show(sel_name)}{origin}; defined: {known_names(selections)}")
    sel = selections[sel_name]
    mem_name = sel["memory"]
    if merged.get("memory") is not None and merged["memory"] != mem_name:
        raise SpecError(f"{p}.memory", f"{show(merged['memory'])} disagrees with the memory of selection "
                                       f"'{sel_name}' ({mem_name!r}); a layer reads the memory of its selection")
    mem = memories[mem_name]
    for key in _FROM_MEMORY:
        if key in registered:
            if key in option_keys and options[key] != mem[key]:
                raise SpecError(f"{p}.{key}", f"{options[key]} disagrees with memories.{mem_name}.{key} "
                                              f"({mem[key]}); it is set by the memory")
            options[key] = mem[key]
    num_heads = options.get("num_heads")
    if isinstance(num_heads, int) and num_heads % mem["kv_heads"]:
        raise SpecError(f"{p}.num_heads", f"{num_heads}{origin} is not a multiple of memories.{mem_name}.kv_heads "
                                          f"({mem['kv_heads']})")
    if "norm_eps" in registered:  # a retrieval layer's own norms; None -> model.norm_eps
        options["norm_eps"] = _eps(f"{p}.norm_eps", options["norm_eps"], model_eps)
    if options.get("residual") is False and not mlp:
        raise SpecError(f"{p}.residual", f"false{origin} needs mlp: true (the layer's output would reach the "
                                         f"stream only through its MLP, and there is none)")
    layer["selection"] = sel_name
    layer["memory"] = mem_name
    return layer
