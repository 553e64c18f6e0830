"""The correct toy mixer the contract-check tests start from (and break in subclasses)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hsa_core.interfaces import Mixer, MixerState


class EMAMixer(Mixer):
    """h_t = a * h_{t-1} + (1 - a) * W_in x_t, y_t = W_out h_t (per channel); state ``{"h": (B, inner)}``."""

    def __init__(self, d_model: int, expand: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        inner = expand * d_model
        self.w_in = nn.Linear(d_model, inner, bias=False)
        self.w_out = nn.Linear(inner, d_model, bias=False)
        self.decay_logit = nn.Parameter(torch.randn(inner))

    def init_state(self, batch_size: int, *, device: Any = None, dtype: Any = None) -> MixerState:
        return {"h": torch.zeros(batch_size, self.w_in.out_features, device=device, dtype=dtype)}

    def forward(self, x: Tensor, state: MixerState | None = None, *, return_state: bool = False):
        a = torch.sigmoid(self.decay_logit)
        u = (1 - a) * self.w_in(x)
        h = state["h"] if state is not None else torch.zeros_like(u[:, 0])
        hs = []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            hs.append(h)
        y = self.w_out(torch.stack(hs, dim=1))
        return y, ({"h": h} if state is not None or return_state else None)
