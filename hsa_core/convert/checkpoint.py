"""The authors' RAMba checkpoint layout <-> toolkit state dicts.

Their ``Mamba2ForCausalLM`` (RamstorageAI/long-context-modeling) stores ``backbone.layers.{j}``
for every module in their order (:func:`~hsa_core.convert.layout.published_groups`): Mamba2 blocks
under the same names as ours (``norm``, ``mixer.in_proj`` ...), the chunking layer (``cls_emb``
``(1, 1, d)``, ``encoder.layers.{e}.self_attn.{q,k,v,o}_proj``, ``...mlp.{gate,up,down}_proj``,
``input_layernorm``, ``post_attention_layernorm``, ``encoder.norm``, ``proj_k``, ``proj_v``,
``k_rmsnorm``, ``lmk_ln``; ``norm`` without an encoder), retrieval layers (``pre_norm``, ``ln``,
``lmk_q_norm``, ``lmk_k_norm``), HSA layers (``pre_norm``, ``q_proj``, ``o_proj``, ``q_norm``), then
``backbone.embeddings``, ``backbone.norm_f`` and ``lm_head``.

Two toolkit tensors are fused where theirs are separate: the encoder's ``qkv`` (rows
``[q | k | v]``) and the SwiGLU ``gate_up`` (rows ``[gate | up]``); conversion concatenates and
slices, so values are copied bit for bit both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .layout import ConvertError, published_groups

__all__ = ["Rule", "conversion_rules", "published_shapes", "to_published_state", "to_toolkit_state"]

EMBEDDING_ALIAS = "backbone.embedding.weight"  # their load hook renames it to backbone.embeddings.weight
TIED_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Rule:
    """One toolkit tensor and the published tensor(s) it is made of.

    ``published`` holds one key, or several whose dim-0 concatenation (sizes ``split``) is the
    toolkit tensor; ``shape`` is the published shape when it is a reshape of the toolkit one (CLS).
    """

    toolkit: str
    published: tuple[str, ...]
    split: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None


_ENC_LAYER = {  # toolkit suffix inside encoder.layers.{e} -> theirs
    "attn_norm.weight": "input_layernorm.weight",
    "q_norm.weight": "self_attn.q_norm.weight",
    "k_norm.weight": "self_attn.k_norm.weight",
    "out.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_MEMORY = {"encoder.norm.weight": "encoder.norm.weight", "k_proj.weight": "proj_k.weight",
           "v_proj.weight": "proj_v.weight", "k_norm.weight": "k_rmsnorm.weight",
           "landmark_proj.weight": "lmk_ln.weight", "chunk_norm.weight": "norm.weight"}
_RETRIEVAL = {"norm.weight": "pre_norm.weight", "query.weight": "ln.weight", "q_norm.weight": "lmk_q_norm.weight",
              "landmark_norm.weight": "lmk_k_norm.weight"}
_HSA = {"norm.weight": "pre_norm.weight", "q_proj.weight": "q_proj.weight", "o_proj.weight": "o_proj.weight",
        "q_norm.weight": "q_norm.weight"}


def _toolkit_shapes(spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    from ..model import HSALanguageModel

    model = HSALanguageModel.from_spec(spec, device="meta")
    state = model.state_dict()
    if model.tied:
        state.pop(TIED_HEAD, None)
    return {k: tuple(v.shape) for k, v in state.items()}


def conversion_rules(spec: Mapping[str, Any]) -> list[Rule]:
    """One :class:`Rule` per toolkit tensor of the canonical ``spec`` (tied head excluded).

    Raises:
        ConvertError: the spec is not a model the authors' code builds.
    """
    order = published_groups(spec)
    shapes = _toolkit_shapes(spec)
    prefix: dict[str, tuple[str, Mapping[str, str]]] = {}  # toolkit prefix -> (their prefix, suffix map)
    for j, (what, ref) in enumerate(order):
        theirs = f"backbone.layers.{j}."
        if what == "mamba":
            prefix[f"layers.{ref}."] = (theirs, {})
        elif what == "hsa":
            prefix[f"layers.{ref}.layer."] = (theirs, _HSA)
        elif what == "chunking":
            prefix[f"memories.{ref}."] = (theirs, _MEMORY)
        else:
            sel, owner = ref
            prefix[f"selections.{sel}." if owner is None else f"layers.{owner}.retrieval."] = (theirs, _RETRIEVAL)
    mem = next(iter(spec["memories"].values()))
    enc = mem["encoder"]
    head_dim = spec["model"]["d_model"] // enc["heads"] if enc["layers"] else 0
    qkv_split = ((enc["heads"] * head_dim, enc["kv_heads"] * head_dim, enc["kv_heads"] * head_dim)
                 if enc["layers"] else ())
    rules = []
    for key, shape in shapes.items():
        if key == "embedding.weight":
            rules.append(Rule(key, ("backbone.embeddings.weight",)))
            continue
        if key == "norm_f.weight":
            rules.append(Rule(key, ("backbone.norm_f.weight",)))
            continue
        if key == TIED_HEAD:
            rules.append(Rule(key, (TIED_HEAD,)))
            continue
        # The longest matching prefix wins (layers.24.layer. before layers.24.).
        match = max((p for p in prefix if key.startswith(p)), key=len, default=None)
        if match is None:  # pragma: no cover - every toolkit tensor belongs to a module in `order`
            raise ConvertError(f"{key}: no counterpart in the authors' layout")
        theirs, table = prefix[match]
        rest = key[len(match):]
        if not table:
            rules.append(Rule(key, (theirs + rest,)))
        elif rest == "encoder.cls":
            rules.append(Rule(key, (theirs + "cls_emb",), shape=(1, 1, shape[0])))
        elif rest.startswith("encoder.layers."):
            e, _, leaf = rest[len("encoder.layers."):].partition(".")
            base = f"{theirs}encoder.layers.{e}."
            if leaf in ("qkv.weight", "qkv.bias"):
                kind = leaf.split(".")[1]
                rules.append(Rule(key, tuple(f"{base}self_attn.{x}_proj.{kind}" for x in "qkv"), split=qkv_split))
            elif leaf == "mlp.gate_up.weight":
                rules.append(Rule(key, (f"{base}mlp.gate_proj.weight", f"{base}mlp.up_proj.weight"),
                                  split=(shape[0] // 2, shape[0] // 2)))
            elif leaf in _ENC_LAYER:
                rules.append(Rule(key, (base + _ENC_LAYER[leaf],)))
            else:  # pragma: no cover
                raise ConvertError(f"{key}: no counterpart in the authors' layout")
        elif rest in table:
            rules.append(Rule(key, (theirs + table[rest],)))
        else:  # pragma: no cover
            raise ConvertError(f"{key}: no counterpart in the authors' layout")
    return rules


def published_shapes(spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the authors' checkpoint for ``spec``: their key -> shape (the tied head
    excluded: it is the embedding)."""
    shapes = _toolkit_shapes(spec)
    out: dict[str, tuple[int, ...]] = {}
    for rule in conversion_rules(spec):
        shape = shapes[rule.toolkit]
        if rule.split is not None:
            for key, n in zip(rule.published, rule.split, strict=True):
                out[key] = (n, *shape[1:])
        else:
            out[rule.published[0]] = rule.shape or shape
    return out


def to_toolkit_state(published: Mapping[str, Tensor], spec: Mapping[str, Any], *,
                     source: str = "checkpoint") -> dict[str, Tensor]:
    """The authors' state dict -> the toolkit's (tied head omitted, as in a model directory).

    Raises:
        ConvertError: ``<source>: <key>: missing | unexpected | shape ... expected ...`` for the first
            mismatch (keys in their order), or a tied head that differs from the embedding.
    """
    state = dict(published)
    if EMBEDDING_ALIAS in state and "backbone.embeddings.weight" not in state:
        state["backbone.embeddings.weight"] = state.pop(EMBEDDING_ALIAS)
    expected = published_shapes(spec)
    tied = spec["model"]["tie_embeddings"]
    if tied and TIED_HEAD in state:
        head, emb = state.pop(TIED_HEAD), state.get("backbone.embeddings.weight")
        if emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            raise ConvertError(f"{source}: {TIED_HEAD}: differs from backbone.embeddings.weight, but the layout "
                               f"ties them (model.tie_embeddings: true)")
    for key, shape in expected.items():
        if key not in state:
            raise ConvertError(f"{source}: {key}: missing (expected shape {list(shape)})")
        if tuple(state[key].shape) != shape:
            raise ConvertError(f"{source}: {key}: shape {list(state[key].shape)}, expected {list(shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ConvertError(f"{source}: {extra[0]}: unexpected (not in the model the layout describes"
                           f"{'' if len(extra) == 1 else f'; {len(extra) - 1} more'})")
    out = {}
    for rule in conversion_rules(spec):
        parts = [state[k] for k in rule.published]
        if len(parts) > 1:
            out[rule.toolkit] = torch.cat(parts, 0)
        elif rule.shape is not None:
            out[rule.toolkit] = parts[0].reshape(-1)
        else:
            out[rule.toolkit] = parts[0]
    return out


def to_published_state(toolkit: Mapping[str, Tensor], spec: Mapping[str, Any], *,
                       include_tied_head: bool = True) -> dict[str, Tensor]:
    """A toolkit state dict -> the authors' (views where possible: no copy of large tensors).

    ``include_tied_head`` adds ``lm_head.weight`` (the embedding) for a tied model, as their
    ``state_dict()`` has it.
    """
    out: dict[str, Tensor] = {}
    for rule in conversion_rules(spec):
        t = toolkit[rule.toolkit]
        if rule.split is not None:
            for key, part in zip(rule.published, torch.split(t, list(rule.split), 0), strict=True):
                out[key] = part
        elif rule.shape is not None:
            out[rule.published[0]] = t.reshape(rule.shape)
        else:
            out[rule.published[0]] = t
    if spec["model"]["tie_embeddings"] and include_tied_head:
        out[TIED_HEAD] = out["backbone.embeddings.weight"]
    return out
