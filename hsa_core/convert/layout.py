"""The authors' RAMba configs (their ``config.json``) <-> toolkit layouts.

The authors' code (RamstorageAI/long-context-modeling, its ``modeling_ramba`` module) builds one
family of models from a flat HuggingFace-style config: ``num_lower_layers`` Mamba2 blocks, a chunking
layer (the chunk memory with its encoder), then ``num_upper_groups`` groups, each a retrieval layer
followed by ``(num_upper_layers / num_upper_groups) / num_mamba_per_gca`` times [one HSA layer +
``num_mamba_per_gca`` Mamba2 blocks]. :func:`layout_from_config` writes that as a layout;
:func:`config_from_spec` goes back, and refuses (one :class:`ConvertError` line naming the field) any
layout their code cannot build.

Settings their code fixes rather than reads from the config, restated here: the memory, encoder,
retrieval and HSA norms use eps 1e-6 (their RMSNorm defaults); the encoder's q/k/v projections have
biases, its SwiGLU is ``floor(8/3 d / 64) * 64`` wide and it uses RoPE with base 10000; HSA's head
width is ``hidden_size / num_attention_heads`` and the encoder has ``num_attention_heads`` heads too;
with an encoder there is no norm before it, without one an RMSNorm precedes the mean landmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import HSAError

__all__ = ["PUBLISHED_EPS", "ConvertError", "config_from_spec", "layout_from_config", "published_groups"]

PUBLISHED_EPS = 1e-6  # their RMSNorm default outside the Mamba blocks

# Config flags their RAMba code reads that change the model, with the value that the toolkit maps.
_SUPPORTED_FLAGS: dict[str, Any] = {
    "enc_prenorm": False,      # an RMSNorm over [chunk, CLS] before the encoder: not expressible
    "hsa_only": True,          # False adds a sliding-window sub-layer to HSA (their SWA model)
    "skip_hsa": False,
    "enable_pos_decay": False,
    "enable_stable_enc": False,
    "reset_hsa_residual": False,
    "insert_mlp": False,
}


class ConvertError(HSAError, ValueError):
    """A checkpoint or layout the converter cannot map; the message names the key or field."""


def _need(config: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in config:
        raise ConvertError(f"{source}: {key}: missing (required by the authors' RAMba config)")
    return config[key]


def layout_from_config(config: Mapping[str, Any], *, name: str | None = None,
                       source: str = "config.json") -> dict[str, Any]:
    """A raw layout that builds the model the authors' code builds from ``config``.

    Raises:
        ConvertError: a required key is missing or a flag selects something the toolkit cannot build.
    """
    for flag, ok in _SUPPORTED_FLAGS.items():
        if flag in config and config[flag] != ok:
            raise ConvertError(f"{source}: {flag}: {config[flag]!r} is not supported (only {ok!r})")
    if config.get("enable_enc_cls", True) is False and config.get("encoder_layers", 0) > 0:
        raise ConvertError(f"{source}: enable_enc_cls: false with an encoder is not supported")
    g = lambda key: _need(config, key, source)
    d, hq, kv = int(g("hidden_size")), int(g("num_attention_heads")), int(g("num_kv_heads"))
    lower, upper = int(g("num_lower_layers")), int(g("num_upper_layers"))
    groups, per_hsa = int(g("num_upper_groups")), int(g("num_mamba_per_gca"))
    if groups < 1 or upper % groups or (upper // groups) % per_hsa:
        raise ConvertError(f"{source}: num_upper_layers: {upper} is not num_upper_groups ({groups}) x a "
                           f"multiple of num_mamba_per_gca ({per_hsa})")
    inner = (upper // groups) // per_hsa
    if d % hq or hq % kv:
        raise ConvertError(f"{source}: num_attention_heads: {hq} must divide hidden_size ({d}) and be a "
                           f"multiple of num_kv_heads ({kv})")
    ssm_heads = int(g("expand")) * d // int(g("head_dim"))
    if int(config.get("num_heads", ssm_heads)) != ssm_heads:
        raise ConvertError(f"{source}: num_heads: {config['num_heads']} is not expand x hidden_size / head_dim "
                           f"({ssm_heads}); their Mamba2 blocks need both to agree")
    enc_layers = int(g("encoder_layers"))
    window = None
    if config.get("mask_slide_window", False):
        window = max(int(config.get("slide_window", 0)), int(config.get("sliding_window", 0)))
    mamba = {"d_state": int(g("state_size")), "d_conv": int(g("conv_kernel")), "expand": int(g("expand")),
             "headdim": int(g("head_dim")), "ngroups": int(config.get("n_groups", 1)),
             "chunk_size": int(config.get("mamba_chunk_size", 256)),
             "bias": bool(config.get("use_bias", False)), "conv_bias": bool(config.get("use_conv_bias", True)),
             "dt_min": float(config.get("time_step_min", 0.001)), "dt_max": float(config.get("time_step_max", 0.1)),
             "dt_init_floor": float(config.get("time_step_floor", 1e-4))}
    memory: dict[str, Any] = {
        "after_layer": lower, "chunk_size": int(g("chunk_size")), "kv_heads": kv, "head_dim": d // hq,
        "landmark": "cls" if enc_layers else "mean", "chunk_norm": not enc_layers,
        "k_norm": bool(config.get("enable_qk_norm", False)), "norm_eps": PUBLISHED_EPS,
        "encoder": {"layers": enc_layers, "heads": hq,
                    "kv_heads": int(config.get("num_key_value_heads", hq)), "qkv_bias": True,
                    "mlp_rounding": "down"} if enc_layers else {"layers": 0},
    }
    selection = {"memory": "mid", "topk": int(g("chunk_topk")), "retrieval_dim": int(g("retrieval_dim")),
                 "retrieval_heads": 1 if config.get("singlehead_retrieval", False) else kv,
                 "weighting": "softmax" if config.get("enable_softmax", False) else "stick_breaking",
                 "gumbel": bool(config.get("enable_gumbel_noise", False)), "window": window,
                 "landmark_norm": bool(config.get("enable_lmk_norm", False)), "norm_eps": PUBLISHED_EPS}
    hsa = {"kind": "hsa", "num_heads": hq, "qk_norm": bool(config.get("enable_qk_norm", False)),
           "sink": bool(config.get("enable_softmax1", False)), "norm_eps": PUBLISHED_EPS}
    retrieval: dict[str, Any] = {}
    symbols: dict[str, Any] = {"M": "mamba2"}
    group = " ".join(["H", f"M*{per_hsa}"] if per_hsa else ["H"])
    if groups == 1 or inner == 1:
        # One selection: shared by every HSA layer, or (one HSA layer per group) re-computed before each.
        retrieval["mid_sel"] = {**selection, "shared": groups == 1}
        symbols["H"] = {**hsa, "selection": "mid_sel"}
        upper_pattern = f"({group})*{groups * inner}"
    else:
        parts = []
        for i in range(groups):
            retrieval[f"sel{i}"] = {**selection, "shared": True}
            symbols[f"H{i}"] = {**hsa, "selection": f"sel{i}"}
            parts.append(f"({group.replace('H', f'H{i}', 1)})*{inner}")
        upper_pattern = " ".join(parts)
    pattern = f"M*{lower} | {upper_pattern}" if lower else upper_pattern
    return {
        "version": 1,
        "name": name or "ramba-published",
        "model": {"vocab_size": int(g("vocab_size")), "d_model": d,
                  "tie_embeddings": bool(config.get("tie_word_embeddings", True)),
                  "norm_eps": float(config.get("layer_norm_epsilon", 1e-5)),
                  "init_std": float(config.get("initializer_range", 0.02)), "init": "published"},
        "defaults": {"mamba2": mamba},
        "memories": {"mid": memory},
        "retrieval": retrieval,
        "symbols": symbols,
        "layers": pattern,
    }


# --------------------------------------------------------------------------------------------------
# spec -> their structure
# --------------------------------------------------------------------------------------------------

def _fail(path: str, message: str) -> ConvertError:
    return ConvertError(f"{path}: {message} (the authors' RAMba code cannot build this)")


def published_groups(spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The authors' module order for a canonical ``spec``: ``("mamba", toolkit layer index)``,
    ``("chunking", memory name)``, ``("retrieval", (selection name, toolkit layer index or None))`` and
    ``("hsa", toolkit layer index)``, position ``j`` being their ``backbone.layers.{j}``.

    A retrieval entry carries the toolkit layer index when the selection is owned by that layer
    (a non-shared selection), else ``None`` (the model's shared ``selections.<name>``).

    Raises:
        ConvertError: the spec is not of the family their code builds (checked by :func:`config_from_spec`).
    """
    config_from_spec(spec)  # validates the family
    mem_name = next(iter(spec["memories"]))
    after = spec["memories"][mem_name]["after_layer"]
    order: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for layer in spec["layers"]:
        i = layer["index"]
        if i == after:
            order.append(("chunking", mem_name))
        if layer["role"] == "retrieval":
            sel = spec["retrieval"][layer["selection"]]
            if not sel["shared"]:
                order.append(("retrieval", (layer["selection"], i)))
            elif layer["selection"] not in seen:
                seen.add(layer["selection"])
                order.append(("retrieval", (layer["selection"], None)))
            order.append(("hsa", i))
        else:
            order.append(("mamba", i))
    return order


def config_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' config (``config.json`` keys) for a canonical ``spec``.

    Raises:
        ConvertError: naming the first field their code cannot express (e.g. a non-Mamba2 layer,
            a chunk norm before the encoder, an eps other than theirs).
    """
    m = spec["model"]
    d = m["d_model"]
    if len(spec["memories"]) != 1:
        raise _fail("memories", f"{len(spec['memories'])} memories; their model has exactly one")
    mem_name, mem = next(iter(spec["memories"].items()))
    p = f"memories.{mem_name}"
    enc = mem["encoder"]
    layers = spec["layers"]
    mambas = [x for x in layers if x["role"] == "backbone"]
    hsas = [x for x in layers if x["role"] == "retrieval"]
    for x in layers:
        if x["kind"] not in ("mamba2", "hsa"):
            raise _fail(f"layers[{x['index']}].kind", f"{x['kind']!r}; their RAMba has only mamba2 and hsa layers")
        if x["mlp"]:
            raise _fail(f"layers[{x['index']}].mlp", "true; their RAMba layers have no MLP")
    if not mambas or not hsas:
        raise _fail("layers", "their RAMba needs Mamba2 blocks and HSA layers")
    opts = mambas[0]["options"]
    for x in mambas[1:]:
        if x["options"] != opts:
            raise _fail(f"layers[{x['index']}].options", "differ from layers[0]; their Mamba2 blocks share one config")
    for key, want in (("d_ssm", None), ("D_has_hdim", False), ("rmsnorm", True), ("norm_before_gate", False),
                      ("dt_limit", None)):
        if opts.get(key) != want:
            raise _fail(f"layers[0].{key}", f"{opts.get(key)!r}; their Mamba2 has {want!r}")
    hopts = hsas[0]["options"]
    for x in hsas[1:]:
        if x["options"] != hopts:
            raise _fail(f"layers[{x['index']}].options", f"differ from layers[{hsas[0]['index']}]; their HSA "
                                                         f"layers share one config")
    hq = hopts["num_heads"]
    if hopts["norm_eps"] != PUBLISHED_EPS:
        raise _fail(f"layers[{hsas[0]['index']}].norm_eps", f"{hopts['norm_eps']}; theirs is {PUBLISHED_EPS}")
    if not hopts.get("residual", True):
        raise _fail(f"layers[{hsas[0]['index']}].residual", "false; their RAMba adds HSA to the stream")
    if d % hq or mem["head_dim"] != d // hq:
        raise _fail(f"{p}.head_dim", f"{mem['head_dim']}; theirs is d_model / num_heads of HSA ({d} / {hq})")
    if mem["norm_eps"] != PUBLISHED_EPS:
        raise _fail(f"{p}.norm_eps", f"{mem['norm_eps']}; theirs is {PUBLISHED_EPS}")
    if mem["k_norm"] != hopts["qk_norm"]:
        raise _fail(f"{p}.k_norm", f"{mem['k_norm']} while the HSA layers' qk_norm is {hopts['qk_norm']}; "
                                   "their enable_qk_norm sets both")
    if enc["layers"]:
        for key, want in (("heads", hq), ("qkv_bias", True), ("mlp_hidden", int(d * 8 / 3) // 64 * 64)):
            if enc[key] != want:
                raise _fail(f"{p}.encoder.{key}", f"{enc[key]!r}; theirs is {want!r}")
        if mem["chunk_norm"]:
            raise _fail(f"{p}.chunk_norm", "true; their encoder has no norm before it")
        if mem["landmark"] != "cls":
            raise _fail(f"{p}.landmark", f"{mem['landmark']!r}; with an encoder theirs is 'cls'")
    elif not mem["chunk_norm"] or mem["landmark"] != "mean":
        raise _fail(f"{p}.chunk_norm", "without an encoder theirs is an RMSNorm and the mean landmark")
    after = mem["after_layer"]
    if (any(x["role"] != "backbone" for x in layers[:after])
            or any(x["role"] != "retrieval" for x in layers[after:after + 1])):
        raise _fail(f"{p}.after_layer", f"{after}; theirs follows the lower Mamba2 blocks, right before an HSA layer")
    # Upper part: groups of [HSA + m Mamba2] with the same m everywhere.
    upper = layers[after:]
    per = None
    run = 0
    for x in [*upper[1:], None]:
        if x is None or x["role"] == "retrieval":
            if per is None:
                per = run
            elif run != per:
                raise _fail("layers", "the HSA layers are not evenly spaced; theirs are [HSA + m Mamba2] repeated")
            run = 0
        else:
            run += 1
    sels = spec["retrieval"]
    used = list(dict.fromkeys(x["selection"] for x in hsas))
    first = sels[used[0]]
    for name in used:
        s = sels[name]
        for key in ("topk", "retrieval_dim", "retrieval_heads", "weighting", "gumbel", "window", "landmark_norm"):
            if s[key] != first[key]:
                raise _fail(f"retrieval.{name}.{key}", f"{s[key]!r} differs from retrieval.{used[0]}.{key}")
        if s["norm_eps"] != PUBLISHED_EPS:
            raise _fail(f"retrieval.{name}.norm_eps", f"{s['norm_eps']}; theirs is {PUBLISHED_EPS}")
    readers = [x["selection"] for x in hsas]
    if len(used) == 1 and sels[used[0]]["shared"]:
        groups = 1
    elif len(used) == 1:
        groups = len(hsas)
    else:
        if any(not sels[n]["shared"] for n in used):
            raise _fail("retrieval", "several selections, some not shared; theirs are one per group")
        groups = len(used)
        inner = len(hsas) // groups
        expect = [n for n in used for _ in range(inner)]
        if readers != expect:
            raise _fail("layers", "each selection must serve one consecutive group of HSA layers of equal size")
    hr = first["retrieval_heads"]
    if hr not in (1, mem["kv_heads"]):  # pragma: no cover - the layout already enforces this
        raise _fail(f"retrieval.{used[0]}.retrieval_heads", f"{hr}")
    config: dict[str, Any] = {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": m["vocab_size"], "hidden_size": d, "tie_word_embeddings": m["tie_embeddings"],
        "layer_norm_epsilon": m["norm_eps"], "initializer_range": m["init_std"], "rms_norm": True,
        "residual_in_fp32": True, "hidden_act": "silu",
        "state_size": opts["d_state"], "conv_kernel": opts["d_conv"], "expand": opts["expand"],
        "head_dim": opts["headdim"], "num_heads": opts["expand"] * d // opts["headdim"],
        "n_groups": opts["ngroups"], "mamba_chunk_size": opts["chunk_size"], "use_bias": opts["bias"],
        "use_conv_bias": opts["conv_bias"], "time_step_min": opts["dt_min"], "time_step_max": opts["dt_max"],
        "time_step_floor": opts["dt_init_floor"],
        "num_lower_layers": after, "num_upper_layers": len(mambas) - after, "num_upper_groups": groups,
        "num_mamba_per_gca": per,
        "chunk_size": mem["chunk_size"], "chunk_topk": first["topk"], "retrieval_dim": first["retrieval_dim"],
        "encoder_layers": enc["layers"], "num_attention_heads": hq,
        "num_key_value_heads": enc["kv_heads"] if enc["layers"] else hq, "num_kv_heads": mem["kv_heads"],
        "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, "lmk_token_id": m["vocab_size"] - 1,
    }
    if hr == 1 and mem["kv_heads"] != 1:
        config["singlehead_retrieval"] = True
    if first["weighting"] == "softmax":
        config["enable_softmax"] = True
    if first["gumbel"]:
        config["enable_gumbel_noise"] = True
    if first["window"] is not None:
        config.update(mask_slide_window=True, sliding_window=first["window"])
    if first["landmark_norm"]:
        config["enable_lmk_norm"] = True
    if hopts["qk_norm"]:
        config["enable_qk_norm"] = True
    if hopts["sink"]:
        config["enable_softmax1"] = True
    return config
