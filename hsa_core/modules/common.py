"""Small building blocks shared by the HSA modules and the model."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` whose weight follows the input's dtype. x ``(..., d)`` -> ``(..., d)``.

    Under bf16 autocast the input arrives in bf16 while the weight stays fp32; ``torch.rms_norm``
    then cannot use its fused kernel, falls back to an unfused one and warns on every call. Casting
    the weight (the gradient still reaches the fp32 parameter) keeps the fused path. Same parameters
    and state-dict keys as ``nn.RMSNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if weight is not None and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


MLP_ROUNDINGS = ("up", "down")


def swiglu_hidden(d_model: int, multiple_of: int = 64, rounding: str = "up") -> int:
    """Default SwiGLU width: 8/3 * d (same parameters as a 4*d GELU MLP) to a multiple of ``multiple_of``.

    ``rounding="up"`` is the toolkit's default (2752 for d=1024); ``"down"`` floors 8/3 d instead,
    which is the width of the published RAMba chunk encoder (2688 for d=1024).
    """
    if rounding not in MLP_ROUNDINGS:
        raise ValueError(f"rounding must be one of {MLP_ROUNDINGS}, got {rounding!r}")
    if rounding == "down":
        return max(multiple_of, int(8 * d_model / 3) // multiple_of * multiple_of)
    hidden = int(8 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``W_down(silu(W_gate x) * W_up x)`` without biases. x ``(..., d)`` -> ``(..., d)``."""

    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or swiglu_hidden(d_model)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
