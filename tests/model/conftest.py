"""Fixtures for model tests: a tiny recurrent toy mixer (fast, exact state carry) and small layouts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from hsa_core import builtin_plugin, hookimpl
from hsa_core.interfaces import Mixer, MixerState
from hsa_core.plugins import PluginHost


class ToyMixer(Mixer):
    """A gated linear recurrence ``s_t = a * s_{t-1} + (1 - a) * W_in x_t``, ``y_t = W_out s_t``.

    Cheap and exactly causal; its state makes segment-wise processing observable.
    """

    def __init__(self, d_model: int, *, expand: int = 2) -> None:
        super().__init__()
        self.d_model, self.inner = d_model, expand * d_model
        self.w_in = nn.Linear(d_model, self.inner, bias=False)
        self.w_out = nn.Linear(self.inner, d_model, bias=False)
        self.decay = nn.Parameter(torch.linspace(-2.0, 2.0, self.inner))

    def init_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> MixerState:
        return {"s": torch.zeros(batch_size, self.inner, device=device, dtype=dtype or self.w_in.weight.dtype)}

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        s = state["s"] if state is not None else self.init_state(x.shape[0], device=x.device, dtype=x.dtype)["s"]
        a = torch.sigmoid(self.decay)
        u = self.w_in(x)
        outs = []
        for t in range(x.shape[1]):
            s = a * s + (1 - a) * u[:, t]
            outs.append(s)
        y = self.w_out(torch.stack(outs, 1))
        return y, ({"s": s} if state is not None or return_state else None)


class ToyPlugin:
    @hookimpl
    def hsa_register_backbones(self, register: Any) -> None:
        register("toy", ToyMixer, description="toy recurrence", defaults={"expand": 2})


@pytest.fixture
def host() -> PluginHost:
    h = PluginHost()
    h.register_plugin(builtin_plugin, name="hsa_builtin_layers")
    h.register_plugin(ToyPlugin(), name="toy_plugin")
    return h


def _tiny(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": {"vocab_size": 97, "d_model": 32, "tie_embeddings": True, "mlp_hidden": 48},
        "memories": {"mid": {"after_layer": 2, "chunk_size": 4, "kv_heads": 2, "head_dim": 8,
                             "encoder": {"layers": 1, "heads": 2, "mlp_hidden": 32}}},
        "retrieval": {"sel": {"memory": "mid", "topk": 3, "retrieval_dim": 16, "retrieval_heads": 1}},
        "symbols": {"T": "toy", "H": {"kind": "hsa", "selection": "sel", "num_heads": 4}},
        "layers": "T*2 (H T)*2",
    }
    raw.update(changes)
    return raw


@pytest.fixture
def tiny() -> Any:
    """``tiny(**changes)`` -> a small toy+HSA layout (d=32, S=4, 2 KV heads, shared selection)."""
    return _tiny
