"""A float64 re-derivation of the published RAMba forward pass, on a checkpoint in the authors' naming.

Written from the paper (arXiv 2504.16795) and the semantics of the authors' code (their parameter
names, shapes and operation order, read from RamstorageAI/long-context-modeling), independently of
the toolkit's modules and kernels: plain loops and einsums in float64, a token-by-token Mamba2
recurrence, explicit per-token top-k. :mod:`hsa_core.convert` uses it to check a conversion, and the
tests compare the toolkit's model against it.

What it computes, in their module order (:func:`~hsa_core.convert.layout.published_groups`):

* Mamba2 block: ``h + out_proj(GatedRMSNorm(y, z))`` where ``y`` is the SSM over
  ``silu(causal_conv(xBC))``, ``dt = softplus(dt + dt_bias)``, ``A = -exp(A_log)``, skip ``D``;
  the block and gate norms use ``layer_norm_epsilon``.
* Chunking layer: complete chunks of S tokens; with an encoder, ``[chunk, cls_emb]`` through
  pre-norm layers (q/k/v with bias, per-head QK RMSNorm, then RoPE over positions 0..S, non-causal
  softmax attention with grouped KV heads, SwiGLU MLP) and a final norm; keys/values are ``proj_k``/
  ``proj_v`` of the S token outputs, the landmark ``lmk_ln`` of the CLS output. Without an encoder:
  RMSNorm, then the landmark of the chunk mean. Norm eps 1e-6.
* Retrieval layer: ``q = ln(RMSNorm(h))``; score ``<q, landmark> / sqrt(d_r / H_r)`` for chunks with
  ``(i+1) S <= t``; the top-k kept, sorted by chunk id descending; stick-breaking weights
  ``exp(s_j - sum_{l<=j} softplus(s_l))`` (their softplus switches to the identity above 15) or a
  softmax over the kept slots.
* HSA layer: ``q = q_proj(RMSNorm(h))`` per head; for every kept chunk a softmax over its S keys
  scaled by ``D^-1/2`` (``+1`` in the denominator with ``enable_softmax1``), weighted sum, ``o_proj``,
  added to ``h``.
* ``logits = lm_head(RMSNorm(h))`` (``lm_head`` = the embedding when tied).

Not reproduced: training-only behaviour (Mamba state reset every ``segment_size`` tokens, Gumbel
noise, the logit regulariser in their HSA backward pass) and their incremental-decoding caches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import PUBLISHED_EPS, ConvertError

__all__ = ["ReferenceOutput", "reference_forward"]

F64 = torch.float64


@dataclass
class ReferenceOutput:
    """Logits ``(B, T, V)`` and the intermediates, float64.

    ``memory``: ``k``, ``v`` ``(B, C*S, H, D)``, ``landmarks`` ``(B, C, H_r, d_r/H_r)``;
    ``selections``: one ``(indices (B, T, H_r, k) int64 with -1 for empty, weights (B, T, H_r, k))``
    per retrieval layer, in order; ``hsa``: each HSA layer's output ``(B, T, d)`` before the residual.
    """

    logits: Tensor
    memory: dict[str, Tensor] = field(default_factory=dict)
    selections: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    hsa: list[Tensor] = field(default_factory=list)


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _softplus15(x: Tensor) -> Tensor:
    # Their stick-breaking calls softplus with threshold 15: the identity above it.
    return torch.where(x > 15, x, torch.log1p(torch.exp(torch.clamp(x, max=15))))


def _order(config: Mapping[str, Any]) -> list[str]:
    order = ["mamba"] * int(config["num_lower_layers"]) + ["chunking"]
    groups, per = int(config["num_upper_groups"]), int(config["num_mamba_per_gca"])
    inner = int(config["num_upper_layers"]) // groups // per
    for _ in range(groups):
        order.append("retrieval")
        for _ in range(inner):
            order += ["hsa"] + ["mamba"] * per
    return order


def _mamba2(p: Mapping[str, Tensor], pre: str, x: Tensor, config: Mapping[str, Any]) -> Tensor:
    """One Mamba2 mixer, token by token. x ``(B, T, d)`` (already normed) -> ``(B, T, d)``."""
    B, T, _ = x.shape
    N, hd, ng = int(config["state_size"]), int(config["head_dim"]), int(config.get("n_groups", 1))
    d_inner = int(config["expand"]) * int(config["hidden_size"])
    nh = d_inner // hd
    zxbcdt = x @ p[pre + "in_proj.weight"].T
    if pre + "in_proj.bias" in p:
        zxbcdt = zxbcdt + p[pre + "in_proj.bias"]
    z, xbc, dt = zxbcdt.split([d_inner, d_inner + 2 * ng * N, nh], dim=-1)
    w = p[pre + "conv1d.weight"][:, 0, :]  # (C, K)
    K = w.shape[1]
    padded = torch.cat([xbc.new_zeros(B, K - 1, xbc.shape[-1]), xbc], 1)
    conv = sum(padded[:, k:k + T] * w[:, k] for k in range(K))
    if pre + "conv1d.bias" in p:
        conv = conv + p[pre + "conv1d.bias"]
    xbc = F.silu(conv)
    xs, Bm, Cm = xbc.split([d_inner, ng * N, ng * N], dim=-1)
    xs = xs.view(B, T, nh, hd)
    head_group = torch.arange(nh) // (nh // ng)
    Bm = Bm.view(B, T, ng, N)[:, :, head_group]  # (B, T, nh, N)
    Cm = Cm.view(B, T, ng, N)[:, :, head_group]
    dt = F.softplus(dt + p[pre + "dt_bias"])  # (B, T, nh)
    A = -torch.exp(p[pre + "A_log"])
    Dskip = p[pre + "D"]
    s = x.new_zeros(B, nh, hd, N)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        s = s * decay + (dt[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Cm[:, t]) + Dskip[:, None] * xs[:, t])
    y = torch.stack(ys, 1).reshape(B, T, d_inner) * F.silu(z)
    gs = d_inner // ng
    y = y.view(B, T, ng, gs)
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    y = (y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + eps)).reshape(B, T, d_inner)
    y = y * p[pre + "norm.weight"]
    out = y @ p[pre + "out_proj.weight"].T
    if pre + "out_proj.bias" in p:
        out = out + p[pre + "out_proj.bias"]
    return out


def _rope(x: Tensor, theta: float = 10000.0) -> Tensor:
    """RoPE (rotate-half) over positions 0..L-1 of x ``(N, L, heads, hd)``."""
    L, hd = x.shape[1], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=F64) / hd)
    ang = torch.arange(L, dtype=F64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)[None, :, None, :]
    rot = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * torch.cos(ang) + rot * torch.sin(ang)


def _encoder(p: Mapping[str, Tensor], pre: str, x: Tensor, config: Mapping[str, Any]) -> Tensor:
    """Their chunk encoder over x ``(N, L, d)`` (non-causal)."""
    N, L, d = x.shape
    hq = int(config["num_attention_heads"])
    hkv = int(config.get("num_key_value_heads", hq))
    hd = d // hq
    eps = PUBLISHED_EPS
    for e in range(int(config["encoder_layers"])):
        b = f"{pre}encoder.layers.{e}."
        a = _rms(x, p[b + "input_layernorm.weight"], eps)
        q = (a @ p[b + "self_attn.q_proj.weight"].T + p[b + "self_attn.q_proj.bias"]).view(N, L, hq, hd)
        k = (a @ p[b + "self_attn.k_proj.weight"].T + p[b + "self_attn.k_proj.bias"]).view(N, L, hkv, hd)
        v = (a @ p[b + "self_attn.v_proj.weight"].T + p[b + "self_attn.v_proj.bias"]).view(N, L, hkv, hd)
        q = _rope(_rms(q, p[b + "self_attn.q_norm.weight"], eps))
        k = _rope(_rms(k, p[b + "self_attn.k_norm.weight"], eps))
        kv_of = torch.arange(hq) // (hq // hkv)  # query head -> its KV head
        k, v = k[:, :, kv_of], v[:, :, kv_of]
        att = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(hd), -1)
        o = torch.einsum("nhqk,nkhd->nqhd", att, v).reshape(N, L, d)
        x = x + o @ p[b + "self_attn.o_proj.weight"].T
        m = _rms(x, p[b + "post_attention_layernorm.weight"], eps)
        gate, up = m @ p[b + "mlp.gate_proj.weight"].T, m @ p[b + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ p[b + "mlp.down_proj.weight"].T
    return _rms(x, p[f"{pre}encoder.norm.weight"], eps)


def _chunking(p: Mapping[str, Tensor], pre: str, h: Tensor, config: Mapping[str, Any]) -> dict[str, Tensor]:
    B, T, d = h.shape
    S = int(config["chunk_size"])
    H = int(config["num_kv_heads"])
    hr = 1 if config.get("singlehead_retrieval", False) else H
    C = T // S
    x = h[:, : C * S].reshape(B * C, S, d)
    if int(config["encoder_layers"]) > 0:
        cls = p[pre + "cls_emb"].reshape(1, 1, d).expand(B * C, 1, d)
        enc = _encoder(p, pre, torch.cat([x, cls], 1), config)
        tokens, summary = enc[:, :S], enc[:, S]
    else:
        tokens = _rms(x, p[pre + "norm.weight"], PUBLISHED_EPS)
        summary = tokens.mean(1)
    k = (tokens @ p[pre + "proj_k.weight"].T).reshape(B, C * S, H, -1)
    if config.get("enable_qk_norm", False):
        k = _rms(k, p[pre + "k_rmsnorm.weight"], PUBLISHED_EPS)
    v = (tokens @ p[pre + "proj_v.weight"].T).reshape(B, C * S, H, -1)
    landmarks = (summary @ p[pre + "lmk_ln.weight"].T).reshape(B, C, hr, -1)
    return {"k": k, "v": v, "landmarks": landmarks}


def _retrieval(p: Mapping[str, Tensor], pre: str, h: Tensor, memory: Mapping[str, Tensor],
               config: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    B, T, _ = h.shape
    S, topk = int(config["chunk_size"]), int(config["chunk_topk"])
    lmk = memory["landmarks"]
    C, hr = lmk.shape[1], lmk.shape[2]
    q = (_rms(h, p[pre + "pre_norm.weight"], PUBLISHED_EPS) @ p[pre + "ln.weight"].T).reshape(B, T, hr, -1)
    if config.get("enable_lmk_norm", False):
        q = _rms(q, p[pre + "lmk_q_norm.weight"], PUBLISHED_EPS)
        lmk = _rms(lmk, p[pre + "lmk_k_norm.weight"], PUBLISHED_EPS)
    scores = torch.einsum("bthd,bchd->bthc", q, lmk) / math.sqrt(q.shape[-1])
    window = None
    if config.get("mask_slide_window", False):
        window = max(int(config.get("slide_window", 0)), int(config.get("sliding_window", 0)))
    softmax = bool(config.get("enable_softmax", False))
    indices = torch.full((B, T, hr, topk), -1, dtype=torch.long)
    weights = torch.zeros(B, T, hr, topk, dtype=F64)
    for b in range(B):
        for t in range(T):
            limit = t if window is None else t - window + S
            visible = [i for i in range(C) if (i + 1) * S <= limit]
            for r in range(hr):
                row = scores[b, t, r]
                kept = sorted(sorted(visible, key=lambda i: -float(row[i]))[:topk], reverse=True)
                if not kept:
                    continue
                s = row[kept]
                if softmax:
                    w = torch.softmax(s, 0)
                else:
                    w = torch.exp(s - torch.cumsum(_softplus15(s), 0))
                indices[b, t, r, : len(kept)] = torch.tensor(kept)
                weights[b, t, r, : len(kept)] = w
    return indices, weights


def _hsa(p: Mapping[str, Tensor], pre: str, h: Tensor, memory: Mapping[str, Tensor],
         selection: tuple[Tensor, Tensor], config: Mapping[str, Any]) -> Tensor:
    B, T, d = h.shape
    S = int(config["chunk_size"])
    hq = int(config["num_attention_heads"])
    D = d // hq
    k, v = memory["k"], memory["v"]
    H = k.shape[2]
    q = (_rms(h, p[pre + "pre_norm.weight"], PUBLISHED_EPS) @ p[pre + "q_proj.weight"].T).reshape(B, T, hq, D)
    if config.get("enable_qk_norm", False):
        q = _rms(q, p[pre + "q_norm.weight"], PUBLISHED_EPS)
    indices, weights = selection
    sink = 1.0 if config.get("enable_softmax1", False) else 0.0
    out = torch.zeros(B, T, hq, D, dtype=F64)
    for g in range(hq):
        kvh = g // (hq // H)
        r = kvh if indices.shape[2] > 1 else 0  # one retrieval head serves every KV head
        for j in range(indices.shape[-1]):
            ids = indices[:, :, r, j]  # (B, T)
            valid = ids >= 0
            rows = (ids.clamp(min=0)[..., None] * S + torch.arange(S)).reshape(B, -1)  # (B, T*S)
            kc = torch.gather(k[:, :, kvh], 1, rows[..., None].expand(-1, -1, D)).view(B, T, S, D)
            vc = torch.gather(v[:, :, kvh], 1, rows[..., None].expand(-1, -1, D)).view(B, T, S, D)
            a = torch.einsum("btd,btsd->bts", q[:, :, g], kc) / math.sqrt(D)
            m = a.amax(-1, keepdim=True)
            e = torch.exp(a - m)  # their softmax_off_by_one: exp(a) / (sum exp(a) + sm_n)
            prob = e / (e.sum(-1, keepdim=True) + sink * torch.exp(-m))
            o = torch.einsum("bts,btsd->btd", prob, vc)
            out[:, :, g] += torch.where(valid[..., None], weights[:, :, r, j, None] * o, 0.0)
    return out.reshape(B, T, d) @ p[pre + "o_proj.weight"].T


@torch.no_grad()
def reference_forward(state: Mapping[str, Tensor], config: Mapping[str, Any], input_ids: Tensor) -> ReferenceOutput:
    """Run the published RAMba on ``input_ids`` ``(B, T)`` with weights ``state`` (their names).

    Args:
        state: their state dict (any float dtype; computed in float64 on CPU).
        config: their ``config.json`` keys (e.g. from :func:`~hsa_core.convert.config_from_spec`).

    Raises:
        ConvertError: a tensor the computation needs is missing.
    """
    p = _Params(state)
    h = p["backbone.embeddings.weight"][input_ids.cpu()]
    out = ReferenceOutput(logits=torch.empty(0))
    memory: dict[str, Tensor] = {}
    selection: tuple[Tensor, Tensor] | None = None
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    for j, kind in enumerate(_order(config)):
        pre = f"backbone.layers.{j}."
        if kind == "mamba":
            h = h + _mamba2(p, pre + "mixer.", _rms(h, p[pre + "norm.weight"], eps), config)
        elif kind == "chunking":
            memory = _chunking(p, pre, h, config)
            out.memory = memory
        elif kind == "retrieval":
            selection = _retrieval(p, pre, h, memory, config)
            out.selections.append(selection)
        else:
            assert selection is not None
            y = _hsa(p, pre, h, memory, selection, config)
            out.hsa.append(y)
            h = h + y
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["backbone.embeddings.weight"]
    out.logits = _rms(h, p["backbone.norm_f.weight"], eps) @ head.T
    return out


class _Params(Mapping[str, Tensor]):
    """Float64 CPU view of a state dict, converting each tensor when first read."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self._state = state
        self._cache: dict[str, Tensor] = {}

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._cache:
            if key not in self._state:
                raise ConvertError(f"{key}: missing (needed by the published forward)")
            self._cache[key] = self._state[key].detach().to("cpu", F64)
        return self._cache[key]

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)
