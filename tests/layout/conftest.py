"""A plugin host with toy backbone kinds, so layout tests do not depend on which backbones are installed."""

from __future__ import annotations

from typing import Any

import pytest

from hsa_core import builtin_plugin, hookimpl
from hsa_core.plugins import PluginHost

TOY_DEFAULTS: dict[str, Any] = {"expand": 2, "act": "silu", "scale": 1.0, "gated": False, "extra": None}


def _factory(d_model: int, **options: Any) -> Any:  # never called by the layout
    raise AssertionError("layout tests do not build models")


class ToyPlugin:
    @hookimpl
    def hsa_register_backbones(self, register: Any) -> None:
        register("toy", _factory, description="toy", defaults=TOY_DEFAULTS)
        register("mamba2", _factory, description="toy mamba2",
                 defaults={"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64})
        register("swa", _factory, description="toy swa", defaults={"window": 512, "num_heads": 8})


@pytest.fixture
def host() -> PluginHost:
    h = PluginHost()
    h.register_plugin(builtin_plugin, name="hsa_builtin_layers")
    h.register_plugin(ToyPlugin(), name="toy_plugin")
    return h


def _ramba_like(**changes: Any) -> dict[str, Any]:
    """RAMba-370M's layout (hsa_spec.md section 7) as a dict; ``changes`` replace top-level keys."""
    raw: dict[str, Any] = {
        "version": 1,
        "name": "ramba-370m",
        "model": {"vocab_size": 50280, "d_model": 1024, "tie_embeddings": True},
        "defaults": {"mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64}},
        "memories": {"mid": {"after_layer": 24, "chunk_size": 64, "kv_heads": 1, "head_dim": 64,
                             "landmark": "cls", "encoder": {"layers": 1}}},
        "retrieval": {"mid_sel": {"memory": "mid", "topk": 8, "retrieval_dim": 1024, "retrieval_heads": 1,
                                  "weighting": "stick_breaking", "shared": True}},
        "symbols": {"M": "mamba2", "H": {"kind": "hsa", "selection": "mid_sel", "num_heads": 16}},
        "layers": "M*24 | (H M*8)*3",
    }
    raw.update(changes)
    return raw


@pytest.fixture
def ramba() -> Any:
    """``ramba(**changes)`` -> a fresh RAMba-370M layout dict."""
    return _ramba_like
