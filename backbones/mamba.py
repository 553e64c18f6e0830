"""Mamba (Mamba1) backbone, parameter-compatible with ``mamba_ssm.modules.mamba_simple.Mamba``.

Same parameter names and shapes (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
``out_proj``), same initialisation and same math, so mamba-ssm checkpoints load with ``strict=True``.

Paths:

* CUDA tensors with mamba-ssm importable: its ``selective_scan_fn`` CUDA kernel. That kernel has no
  initial-state input, so a carried state is added exactly by linearity: with
  ``P_t = exp(sum_{s<=t} dt_s A)`` the state is ``h_t = h_t^0 + P_t h_0`` and the output gains
  ``C_t . (P_t h_0)`` (``P_t <= 1``, so this is stable).
* Everywhere else: :func:`hsa_backbones._ssm.selective_scan` (vectorised discretisation, one fused
  multiply-add per token; see its docstring for why that beats a parallel scan on CPU).

State (mamba-ssm's ``allocate_inference_cache`` layout, batch first):

* ``conv``: ``(B, d_inner, d_conv)`` the last ``d_conv`` conv inputs;
* ``ssm``: ``(B, d_inner, d_state)``, kept in fp32 (at least).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsa_core.interfaces import Mixer, MixerState

from ._ssm import causal_conv, causal_conv_step, selective_scan
from .fast_paths import causal_conv_kernel, forced_torch, selective_scan_kernel

MAMBA_DEFAULTS: dict[str, Any] = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",  # "auto": ceil(d_model / 16)
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",  # "random" | "constant"
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
}


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


class Mamba(Mixer):
    """Mamba1 mixer over ``(B, T, d_model)``; arguments as in mamba-ssm's ``Mamba`` (see :data:`MAMBA_DEFAULTS`)."""

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt_proj.bias = softplus^-1 of dt ~ logUniform(dt_min, dt_max) (mamba-ssm's init).
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]  # mamba-ssm's init flag
        # S4D-real init: A = -(1, 2, ..., d_state) for every channel.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    @property
    def compute_dtype(self) -> torch.dtype:
        """fp32 for the scan whatever the parameter dtype (fp64 kept for reference tests)."""
        return _state_dtype(self.in_proj.weight.dtype)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Zero state: ``conv`` ``(B, d_inner, d_conv)``, ``ssm`` ``(B, d_inner, d_state)`` (fp32)."""
        dtype = dtype or self.in_proj.weight.dtype
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=_state_dtype(dtype)),
        }

    def _project(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input-dependent ``dt`` (after softplus, fp32), ``B``, ``C`` from the conv output ``(..., d_inner)``."""
        cdt = self.compute_dtype
        dt, B, C = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(cdt) + self.dt_proj.bias.to(cdt))
        return dt, B.to(cdt), C.to(cdt)

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """Mix ``x`` ``(B, T, d_model)``, continuing from ``state``; returns ``(y (B, T, d_model), state)``."""
        cdt = self.compute_dtype
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        fast = x.is_cuda and not forced_torch()
        xc, conv_state = causal_conv(xs, None if state is None else state["conv"], self.conv1d.weight,
                                     self.conv1d.bias, kernel=causal_conv_kernel() if fast else None)
        dt, B, C = self._project(xc)
        A = -torch.exp(self.A_log.to(self.compute_dtype))
        h0 = None if state is None else state["ssm"].to(self.compute_dtype)
        scan = selective_scan_kernel() if fast else None
        if scan is not None:
            # Kernel layout is channels-first; dt is passed after softplus (delta_softplus=False).
            u, dtc = xc.to(cdt).transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous()
            y, h = scan(u, dtc, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                                          return_last_state=True)
            y = y.transpose(1, 2).to(self.compute_dtype)
            if h0 is not None:
                decay = torch.exp(torch.cumsum(dt, dim=1).unsqueeze(-1) * A)  # (b, t, d, n)
                y = y + torch.einsum("btdn,bdn,btn->btd", decay, h0, C)
                h = h.to(self.compute_dtype) + decay[:, -1] * h0
        else:
            y, h = selective_scan(xc.to(self.compute_dtype), dt, A, B, C, initial_state=h0)
        y = (y + xc.to(cdt) * self.D.to(cdt)) * F.silu(z.to(cdt))
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(x.dtype)
        if state is None and not return_state:
            return out, None
        return out, {"conv": conv_state.to(x.dtype if state is None else state["conv"].dtype),
                     "ssm": h.to(_state_dtype(x.dtype) if state is None else state["ssm"].dtype)}

    def step(self, x: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """One token: x ``(B, d_model)`` -> ``((B, d_model), new state)``."""
        cdt = self.compute_dtype
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xc, conv_state = causal_conv_step(xs, state["conv"], self.conv1d.weight, self.conv1d.bias)
        dt, B, C = self._project(xc)  # (b, d), (b, n), (b, n)
        dA = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log.to(self.compute_dtype)))
        h = state["ssm"].to(cdt) * dA + (dt * xc.to(cdt)).unsqueeze(-1) * B.unsqueeze(1)
        y = (torch.einsum("bdn,bn->bd", h, C) + xc.to(cdt) * self.D.to(cdt)) * F.silu(z.to(cdt))
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(x.dtype)
        return out, {"conv": conv_state, "ssm": h.to(state["ssm"].dtype)}


def build_mamba(d_model: int, **options: Any) -> Mamba:
    """Factory of the ``mamba`` kind (options: :data:`MAMBA_DEFAULTS`)."""
    return Mamba(d_model, **options)
