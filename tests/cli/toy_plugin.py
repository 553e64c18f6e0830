"""A plugin *file* for the CLI tests, loaded with ``--plugin``: tiny backbones with no dependencies.

* ``toy_ema``: an exponential moving average of a projection (exact recurrent state, instant on CPU),
  so CLI tests of valid specs do not depend on any optional library.
* ``toy_needs_dep``: a backbone whose factory needs a module that does not exist, to test exit code 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import hsa_core
from hsa_core.errors import require
from hsa_core.interfaces import Mixer, MixerState


class ToyEMA(Mixer):
    """``h_t = decay * h_{t-1} + (1 - decay) * W_in x_t``, ``y_t = W_out h_t``."""

    def __init__(self, d_model: int, *, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:  # a constraint only the constructor knows (like mamba2's headdim)
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.d_model, self.decay = d_model, decay
        self.w_in = nn.Linear(d_model, d_model, bias=False)
        self.w_out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, *, device: Any = None, dtype: torch.dtype | None = None) -> MixerState:
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        u = self.w_in(x)
        h = state["h"].to(u.dtype) if state is not None else u.new_zeros(u.shape[0], self.d_model)
        outs = []
        for t in range(x.shape[1]):
            h = self.decay * h + (1 - self.decay) * u[:, t]
            outs.append(h)
        y = self.w_out(torch.stack(outs, dim=1))
        return y, ({"h": h} if state is not None or return_state else None)


def needs_dep(d_model: int, **options: Any) -> Mixer:
    require("hsa_test_module_that_does_not_exist", what="backbone 'toy_needs_dep'", extra="imaginary")
    raise AssertionError("unreachable")


@hsa_core.hookimpl
def hsa_register_backbones(register: Callable[..., Any]) -> None:
    register("toy_ema", ToyEMA, description="test-only EMA backbone", defaults={"decay": 0.9})
    register("toy_needs_dep", needs_dep, description="test-only backbone with a missing dependency",
             requires=("hsa_test_module_that_does_not_exist",), extra="imaginary")
