"""Small models in the authors' configuration keys and parameter naming, with random weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from .published_configs import CONFIG_ENC1_4096
from .published_params import published_parameter_table

#: A small RAMba in their keys: 2 lower Mamba2 blocks, memory, 3 x (HSA + 1 Mamba2); S=16, top-2.
SMALL: dict[str, Any] = {
    **CONFIG_ENC1_4096, "hidden_size": 64, "head_dim": 16, "num_heads": 8, "intermediate_size": 128,
    "state_size": 16, "vocab_size": 101, "lmk_token_id": 100,
    "num_lower_layers": 2, "num_upper_layers": 3, "num_mamba_per_gca": 1, "chunk_size": 16, "chunk_topk": 2,
    "retrieval_dim": 32, "num_attention_heads": 4, "num_key_value_heads": 4, "num_kv_heads": 1,
    "mamba_chunk_size": 32,
}

#: Variants: the authors' default (2-layer encoder, GQA), no encoder, three groups (multi-hop), and
#: the optional flags their code has (QK-norm, landmark norm, softmax weights, softmax+1, 2 KV heads
#: with one retrieval head).
VARIANTS: dict[str, dict[str, Any]] = {
    "enc1": {},
    "enc2-gqa": {"encoder_layers": 2, "num_key_value_heads": 2},
    "no-encoder": {"encoder_layers": 0},
    "three-groups": {"num_upper_groups": 3},
    "two-groups-of-two": {"num_upper_groups": 2, "num_upper_layers": 4},
    "flags": {"num_kv_heads": 2, "singlehead_retrieval": True, "enable_qk_norm": True, "enable_lmk_norm": True,
              "enable_softmax1": True},
    "softmax-kv2": {"num_kv_heads": 2, "enable_softmax": True, "num_upper_layers": 6, "num_mamba_per_gca": 2},
}


def random_published_state(config: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    """Random float32 weights for every tensor of their model, scaled so every path matters."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in published_parameter_table(config).items():
        r = torch.randn(shape, generator=g)
        if "norm" in key or "layernorm" in key:
            t = 1.0 + 0.2 * r
        elif key.endswith("A_log"):
            t = torch.log(1.0 + 15.0 * torch.rand(shape, generator=g))
        elif key.endswith("dt_bias"):
            dt = torch.exp(torch.rand(shape, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
            t = dt + torch.log(-torch.expm1(-dt))
        elif key.endswith(".D"):
            t = 1.0 + 0.1 * r
        elif key.endswith("bias"):
            t = 0.2 * r
        elif key.endswith("cls_emb") or "embeddings" in key:
            t = r
        elif key.endswith("conv1d.weight"):
            t = 0.5 * r
        else:  # projections: unit-scale outputs; the landmark and query projections a bit larger,
            # so that selection scores spread and top-k really chooses
            scale = 3.0 if key.endswith(("lmk_ln.weight", "ln.weight")) else 1.0
            t = scale * r / math.sqrt(shape[-1])
        out[key] = t.contiguous()
    return out


@pytest.fixture
def published_model() -> Callable[[str], tuple[dict[str, Any], dict[str, Tensor]]]:
    """``published_model(variant)`` -> (their config, random state dict in their naming)."""

    def make(variant: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
        config = {**SMALL, **VARIANTS[variant]}
        return config, random_published_state(config)

    return make
