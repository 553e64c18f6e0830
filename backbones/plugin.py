"""The built-in backbones, registered through the same ``hsa`` hook as third-party plugins.

Loaded through this package's entry point ``hsa_builtin_backbones = "hsa_backbones.plugin"``. Importing
this module is cheap: the adapters import their optional libraries (mamba-ssm, fla) only when a
mixer is built or run, so ``hsa list`` and ``hsa validate`` work without them.

``requires`` lists what a kind cannot run without (``hsa list`` reports it): only the fla kinds have
one. Mamba and Mamba2 run everywhere through their PyTorch paths; their ``extra`` (``mamba``) brings
mamba-ssm's CUDA/Triton kernels, used automatically on CUDA tensors when importable. The fla kinds
run on CPU only under Triton's interpreter (set up automatically; slow, fine for tests). Descriptions
stay short: ``hsa list`` prints them in a table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hsa_core

from .attention import ATTENTION_DEFAULTS, SWA_DEFAULTS, build_attention, build_swa
from .fla_adapters import GLA_DEFAULTS, RWKV6_DEFAULTS, RWKV7_DEFAULTS, build_gla, build_rwkv6, build_rwkv7
from .mamba import MAMBA_DEFAULTS, build_mamba
from .mamba2 import MAMBA2_DEFAULTS, build_mamba2


@hsa_core.hookimpl
def hsa_register_backbones(register: Callable[..., Any]) -> None:
    """Register ``mamba``, ``mamba2``, ``gla``, ``rwkv6``, ``rwkv7``, ``swa`` and ``attention``."""
    register("mamba", build_mamba, extra="mamba", defaults=dict(MAMBA_DEFAULTS),
             description="Mamba selective SSM (mamba-ssm compatible)")
    register("mamba2", build_mamba2, extra="mamba", defaults=dict(MAMBA2_DEFAULTS),
             description="Mamba2 / SSD (mamba-ssm compatible)")
    register("gla", build_gla, requires=("fla",), extra="fla", defaults=dict(GLA_DEFAULTS),
             description="Gated linear attention (fla)")
    register("rwkv6", build_rwkv6, requires=("fla",), extra="fla", defaults=dict(RWKV6_DEFAULTS),
             description="RWKV6 time mixing (fla)")
    register("rwkv7", build_rwkv7, requires=("fla",), extra="fla", defaults=dict(RWKV7_DEFAULTS),
             description="RWKV7 time mixing (fla), own v_first")
    register("swa", build_swa, defaults=dict(SWA_DEFAULTS),
             description="Sliding-window attention (SDPA, RoPE)")
    register("attention", build_attention, defaults=dict(ATTENTION_DEFAULTS),
             description="Full causal attention (SDPA, RoPE)")
