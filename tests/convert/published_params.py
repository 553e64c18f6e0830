"""The authors' RAMba parameter table, re-derived from their module definitions (not from the converter).

For a config in their keys, every tensor their ``Mamba2ForCausalLM`` (RamstorageAI/long-context-modeling,
``model/modeling_ramba.py``, ``model/hsa_layers.py``, ``model/encoder.py``) registers, with its shape,
in their module order:

* ``Mamba2Block``: ``norm`` (d); ``Mamba2Mixer``: ``in_proj`` (intermediate + conv_dim + heads, d) with
  intermediate = expand d, conv_dim = intermediate + 2 n_groups state_size, heads = intermediate /
  head_dim; ``conv1d`` (conv_dim, 1, conv_kernel) + bias; ``dt_bias``, ``A_log``, ``D`` (heads);
  gated ``norm`` (intermediate); ``out_proj`` (d, intermediate).
* ``ChunkingLayer``: ``cls_emb`` (1, 1, d) with an encoder, else ``norm`` (d); the encoder (Qwen2-style
  layers: q/k/v projections with bias, kv width num_key_value_heads x head, o_proj, q/k norms of the
  head width, SwiGLU of width floor(8/3 d / 64) * 64, two layer norms; a final norm); ``proj_k``,
  ``proj_v`` (d / (num_attention_heads / num_kv_heads), d); ``k_rmsnorm`` with QK-norm; ``lmk_ln``
  (retrieval_dim, d).
* ``RetrievalLayer``: ``pre_norm`` (d), ``ln`` (retrieval_dim, d), landmark norms when enabled.
* ``HierarchicalSparseAttention``: ``pre_norm`` (d), ``q_proj``, ``o_proj`` (d, d), ``q_norm`` with QK-norm.
* ``embeddings`` (vocab, d), ``norm_f`` (d), ``lm_head`` (vocab, d; the embedding when tied).
"""

from __future__ import annotations

import math
from typing import Any


def published_parameter_table(c: dict[str, Any], *, with_tied_head: bool = False) -> dict[str, tuple[int, ...]]:
    d = c["hidden_size"]
    inter = c["expand"] * d
    ng, n = c.get("n_groups", 1), c["state_size"]
    heads = inter // c["head_dim"]
    conv_dim = inter + 2 * ng * n
    hq, kv = c["num_attention_heads"], c["num_kv_heads"]
    hd = d // hq
    enc_kv = c.get("num_key_value_heads", hq)
    enc_mlp = int((d * 8 / 3) // 64 * 64)
    hr_dim = c["retrieval_dim"] // (1 if c.get("singlehead_retrieval") else kv)
    qk = c.get("enable_qk_norm", False)
    out: dict[str, tuple[int, ...]] = {"backbone.embeddings.weight": (c["vocab_size"], d)}

    def mamba(j: int) -> None:
        p = f"backbone.layers.{j}."
        out[p + "norm.weight"] = (d,)
        out[p + "mixer.in_proj.weight"] = (inter + conv_dim + heads, d)
        out[p + "mixer.conv1d.weight"] = (conv_dim, 1, c["conv_kernel"])
        out[p + "mixer.conv1d.bias"] = (conv_dim,)
        for name in ("dt_bias", "A_log", "D"):
            out[p + f"mixer.{name}"] = (heads,)
        out[p + "mixer.norm.weight"] = (inter,)
        out[p + "mixer.out_proj.weight"] = (d, inter)

    j = 0
    for _ in range(c["num_lower_layers"]):
        mamba(j)
        j += 1
    p = f"backbone.layers.{j}."
    if c["encoder_layers"] > 0:
        out[p + "cls_emb"] = (1, 1, d)
        for e in range(c["encoder_layers"]):
            q = f"{p}encoder.layers.{e}."
            out[q + "self_attn.q_proj.weight"] = (hq * hd, d)
            out[q + "self_attn.q_proj.bias"] = (hq * hd,)
            for x in "kv":
                out[q + f"self_attn.{x}_proj.weight"] = (enc_kv * hd, d)
                out[q + f"self_attn.{x}_proj.bias"] = (enc_kv * hd,)
            out[q + "self_attn.o_proj.weight"] = (d, hq * hd)
            out[q + "self_attn.q_norm.weight"] = (hd,)
            out[q + "self_attn.k_norm.weight"] = (hd,)
            out[q + "mlp.gate_proj.weight"] = (enc_mlp, d)
            out[q + "mlp.up_proj.weight"] = (enc_mlp, d)
            out[q + "mlp.down_proj.weight"] = (d, enc_mlp)
            out[q + "input_layernorm.weight"] = (d,)
            out[q + "post_attention_layernorm.weight"] = (d,)
        out[p + "encoder.norm.weight"] = (d,)
    else:
        out[p + "norm.weight"] = (d,)
    kv_dim = d // (hq // kv)
    out[p + "proj_k.weight"] = (kv_dim, d)
    out[p + "proj_v.weight"] = (kv_dim, d)
    if qk:
        out[p + "k_rmsnorm.weight"] = (kv_dim // kv,)
    out[p + "lmk_ln.weight"] = (c["retrieval_dim"], d)
    j += 1
    groups = c["num_upper_groups"]
    inner = c["num_upper_layers"] // groups // c["num_mamba_per_gca"]
    for _ in range(groups):
        p = f"backbone.layers.{j}."
        out[p + "pre_norm.weight"] = (d,)
        out[p + "ln.weight"] = (c["retrieval_dim"], d)
        if c.get("enable_lmk_norm"):
            out[p + "lmk_q_norm.weight"] = (hr_dim,)
            out[p + "lmk_k_norm.weight"] = (hr_dim,)
        j += 1
        for _ in range(inner):
            p = f"backbone.layers.{j}."
            out[p + "pre_norm.weight"] = (d,)
            out[p + "q_proj.weight"] = (d, d)
            out[p + "o_proj.weight"] = (d, d)
            if qk:
                out[p + "q_norm.weight"] = (hd,)
            j += 1
            for _ in range(c["num_mamba_per_gca"]):
                mamba(j)
                j += 1
    out["backbone.norm_f.weight"] = (d,)
    if with_tied_head or not c.get("tie_word_embeddings", True):
        out["lm_head.weight"] = (c["vocab_size"], d)
    return out


def count(table: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in table.values())
