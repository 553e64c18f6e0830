"""minLSTM as an hsa-toolkit mixer.

Recurrence (per channel of the inner width ``d_inner = expand * d_model``)::

    f_t, i_t = sigmoid(W_f x_t), sigmoid(W_i x_t)            # forget / input gates
    f'_t, i'_t = f_t / (f_t + i_t), i_t / (f_t + i_t)        # normalised: f' + i' = 1
    h_t = f'_t * h_{t-1} + i'_t * g(W_h x_t)                 # g(x) > 0 (see below)
    y_t = W_o h_t

The gates depend only on ``x_t`` (not on ``h_{t-1}``), so ``h_t = a_t h_{t-1} + b_t`` is a linear
recurrence that a parallel scan computes for the whole sequence at once. We run the scan in log space
(``log h_t = A_t + logsumexp(log h_0, log b_s - A_s for s <= t)`` with ``A_t = sum log a``), which is
why the candidate goes through ``g`` (positive, so ``log b`` exists), as in the paper.

State: ``{"h": (B, d_inner)}`` in fp32 (fp64 for fp64 models), whatever the activations' dtype: the
state is what carries information across segments, and keeping it in fp32 makes segment-wise and
step-wise processing agree with the full pass to fp32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsa_core.interfaces import Mixer, MixerState

#: Options a layout may set for ``minlstm`` (and their defaults).
MINLSTM_DEFAULTS: dict[str, Any] = {"expand": 2, "scan_chunk": 64}


def _log_g(x: Tensor) -> Tensor:
    """``log g(x)`` for the paper's positive activation ``g(x) = x + 0.5 if x >= 0 else sigmoid(x)``."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def _scan_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the scan and the state: at least fp32 (bf16 cumulative sums drift)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class MinLSTMMixer(Mixer):
    """minLSTM sequence mixer over ``(B, T, d_model)``.

    Args:
        d_model: model width.
        expand: inner width factor (``d_inner = expand * d_model``).
        scan_chunk: tokens per log-space scan block. The cumulative log-gate sum ``A_t`` grows
            linearly with ``t``; restarting it every block keeps its magnitude (and so the fp32
            rounding of ``A_t - A_s``) bounded however long the sequence is. Results do not depend
            on it beyond rounding.
    """

    def __init__(self, d_model: int, *, expand: int = 2, scan_chunk: int = 64) -> None:
        super().__init__()
        if expand < 1 or scan_chunk < 1:
            raise ValueError(f"expand and scan_chunk must be >= 1, got {expand}, {scan_chunk}")
        self.d_model = d_model
        self.d_inner = expand * d_model
        self.scan_chunk = scan_chunk
        # One projection for both gates and the candidate (one matmul instead of three).
        self.in_proj = nn.Linear(d_model, 3 * self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    # -- contract -----------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Zero hidden state: fp32, or fp64 when ``dtype`` is fp64 (see the module docstring)."""
        return {"h": torch.zeros(batch_size, self.d_inner, device=device, dtype=_scan_dtype(dtype))}

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """Full or continued pass; see :class:`hsa_core.interfaces.Mixer`."""
        log_a, log_b = self._log_coefficients(x)  # (B, T, d_inner) each, fp32
        h0 = state["h"] if state is not None else None
        hs = []
        for start in range(0, x.shape[1], self.scan_chunk):
            block_slice = slice(start, start + self.scan_chunk)
            block = self._scan(log_a[:, block_slice], log_b[:, block_slice], h0)
            hs.append(block)
            h0 = block[:, -1]
        h = torch.cat(hs, dim=1)
        y = self.out_proj(h.to(x.dtype))
        if state is None and not return_state:
            return y, None
        # a copy: the slice would keep every position's hidden state alive in the carried state
        return y, {"h": h[:, -1].clone()}

    def step(self, x: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """One token with the plain recurrence (no scan): ``h = a * h + b``."""
        log_a, log_b = self._log_coefficients(x.unsqueeze(1))
        h = torch.exp(log_a[:, 0]) * state["h"] + torch.exp(log_b[:, 0])
        return self.out_proj(h.to(x.dtype)), {"h": h}

    # -- internals ----------------------------------------------------------------------------
    def _log_coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log a_t`` and ``log b_t`` of ``h_t = a_t h_{t-1} + b_t``, in fp32 (fp64 for fp64 input)."""
        f, i, cand = self.in_proj(x).to(_scan_dtype(x.dtype)).chunk(3, dim=-1)
        log_f, log_i = -F.softplus(-f), -F.softplus(-i)  # log sigmoid, stable for large |x|
        log_norm = torch.logaddexp(log_f, log_i)          # log(f + i)
        return log_f - log_norm, log_i - log_norm + _log_g(cand)

    @staticmethod
    def _scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
        """``h_t`` for one block from ``h0`` (``None`` = zeros) by a log-space parallel scan."""
        A = torch.cumsum(log_a, dim=1)
        log_h = torch.logcumsumexp(log_b - A, dim=1)
        if h0 is not None:
            # h0 may contain exact zeros (the zero state): log 0 = -inf is right for the value, but
            # the clamp keeps log's gradient finite there (d/dh log h = inf would turn into NaN).
            log_h0 = torch.where(h0 > 0, torch.log(h0.clamp_min(torch.finfo(h0.dtype).tiny)), -torch.inf)
            log_h = torch.logaddexp(log_h, log_h0.unsqueeze(1))
        return torch.exp(A + log_h)
