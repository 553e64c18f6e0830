"""Mamba2 backbone, parameter-compatible with ``mamba_ssm.modules.mamba2.Mamba2``.

Same parameter names and shapes (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``,
``out_proj``), same initialisation and same math, so a mamba-ssm checkpoint's ``state_dict`` (per
layer, ``mixer.`` prefix stripped) loads with ``strict=True``.

Paths:

* CUDA tensors with mamba-ssm installed (its compiled extension is *not* needed:
  :mod:`hsa_backbones.fast_paths`): mamba-ssm's Triton kernels throughout, as in its own ``Mamba2``:
  ``mamba_chunk_scan_combined`` (with ``D``, ``dt_bias``, softplus, ``initial_states`` /
  ``return_final_states``), the gated RMSNorm ``rmsnorm_fn``, and ``selective_state_update`` for
  one-token decoding; the causal conv through causal-conv1d or fla's Triton kernel when installed,
  else cuDNN. Everything stays in the autocast dtype between kernels (no fp32 copies of activations).
  ``HSA_MAMBA_PATH=torch`` forces the PyTorch path.
* Everywhere else: the pure-PyTorch chunked SSD scan :func:`hsa_backbones._ssm.ssd_scan` (no loop over
  tokens; see :mod:`hsa_backbones._ssm` for why it is ours rather than mamba-ssm's or transformers').

State (mamba-ssm's ``allocate_inference_cache`` layout, batch first):

* ``conv``: ``(B, d_ssm + 2 * ngroups * d_state, d_conv)`` the last ``d_conv`` conv inputs;
* ``ssm``: ``(B, nheads, headdim, d_state)`` the SSM state, kept in fp32 (at least) so that long
  segment-wise prefill does not accumulate rounding in bf16.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsa_core.errors import HSAError
from hsa_core.interfaces import Mixer, MixerState

from ._ssm import GatedRMSNorm, causal_conv, causal_conv_step, ssd_scan
from .fast_paths import MambaTriton, causal_conv_kernel, forced_torch, mamba_triton

MAMBA2_DEFAULTS: dict[str, Any] = {
    "d_state": 128,
    "d_conv": 4,
    "expand": 2,
    "headdim": 64,
    "d_ssm": None,  # None: d_inner (the whole inner width goes through the SSM)
    "ngroups": 1,
    "A_init_range": [1.0, 16.0],
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init_floor": 1e-4,
    "dt_limit": None,  # None: no clamp of dt (mamba-ssm's (0, inf)); else [lo, hi]
    "bias": False,
    "conv_bias": True,
    "conv_init": None,
    "chunk_size": 256,
}


CPU_CHUNK = 64  # chunk length of the PyTorch scan on CPU (see forward)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


class Mamba2(Mixer):
    """Mamba2 mixer over ``(B, T, d_model)``; arguments as in mamba-ssm's ``Mamba2`` (see :data:`MAMBA2_DEFAULTS`)."""

    def __init__(self, d_model: int, *, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 d_ssm: int | None = None, ngroups: int = 1, A_init_range: tuple[float, float] | list[float] = (1, 16),
                 D_has_hdim: bool = False, rmsnorm: bool = True, norm_before_gate: bool = False,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] | list[float] | None = None, bias: bool = False,
                 conv_bias: bool = True, conv_init: float | None = None, chunk_size: int = 256) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.headdim, self.ngroups = headdim, ngroups
        if self.d_ssm % headdim:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be a multiple of headdim ({headdim})")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = None if dt_limit is None or tuple(dt_limit) == (0.0, math.inf) else tuple(dt_limit)
        self.chunk_size = chunk_size
        self.d_mlp = (self.d_inner - self.d_ssm)  # gated-MLP width when d_ssm < d_inner (per half)

        # Order of in_proj's outputs (mamba-ssm): [z0, x0, z, xBC, dt].
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias)
        self.conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias,
                                padding=d_conv - 1)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        # dt_bias = softplus^-1 of dt ~ logUniform(dt_min, dt_max) (mamba-ssm's init).
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        lo, hi = A_init_range
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]  # mamba-ssm's optimizer-grouping flag
        self.norm = (GatedRMSNorm(self.d_ssm, eps=1e-5, group_size=self.d_ssm // ngroups,
                                  norm_before_gate=norm_before_gate) if rmsnorm else None)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    @property
    def compute_dtype(self) -> torch.dtype:
        """fp32 for the scan and the norms whatever the parameter dtype (fp64 kept for reference tests)."""
        return _state_dtype(self.in_proj.weight.dtype)

    # -- state ---------------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Zero state: ``conv`` ``(B, conv_dim, d_conv)``, ``ssm`` ``(B, nheads, headdim, d_state)`` (fp32)."""
        dtype = dtype or self.in_proj.weight.dtype
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                               dtype=_state_dtype(dtype)),
        }

    # -- pieces shared by forward and step -------------------------------------------------------
    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return torch.split(zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _dt(self, dt: Tensor) -> Tensor:
        dt = F.softplus(dt.to(self.compute_dtype) + self.dt_bias.to(self.compute_dtype))
        if self.dt_limit is not None:
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _skip(self) -> Tensor:
        """``D`` as ``(H, P)`` or ``(H, 1)`` for broadcasting over ``(..., H, P)``."""
        D = self.D.to(self.compute_dtype)
        return D.view(self.nheads, self.headdim) if self.D_has_hdim else D[:, None]

    def _output(self, y: Tensor, z: Tensor, z0: Tensor, x0: Tensor) -> Tensor:
        """Gate/norm, prepend the gated-MLP part, project: y ``(..., d_ssm)`` -> ``(..., d_model)``."""
        cdt = self.compute_dtype
        if self.norm is not None:
            y = self.norm(y, z)
        else:
            y = y * F.silu(z.to(cdt))
        if self.d_mlp > 0:  # mamba-ssm puts the gated-MLP part first
            y = torch.cat([F.silu(z0.to(cdt)) * x0.to(cdt), y.to(cdt)], dim=-1)
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    # -- forward -------------------------------------------------------------------------------
    def _fast(self, x: Tensor) -> MambaTriton | None:
        """mamba-ssm's Triton kernels for CUDA inputs (None: the PyTorch path)."""
        if not x.is_cuda or forced_torch():
            return None
        return mamba_triton()

    def _finish_state(self, x: Tensor, state: MixerState | None, conv_state: Tensor, ssm: Tensor) -> MixerState:
        return {"conv": conv_state.to(x.dtype if state is None else state["conv"].dtype),
                "ssm": ssm.to(_state_dtype(x.dtype) if state is None else state["ssm"].dtype)}

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """Mix ``x`` ``(B, T, d_model)``, continuing from ``state``; returns ``(y (B, T, d_model), state)``."""
        tri = self._fast(x)
        if tri is not None:
            return self.forward_triton(x, state, return_state=return_state, kernels=tri,
                                       conv_kernel=causal_conv_kernel())
        cdt = self.compute_dtype
        z0, x0, z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv_state = causal_conv(xbc, None if state is None else state["conv"], self.conv1d.weight,
                                      self.conv1d.bias)
        xs, B, C = torch.split(xbc, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        xs = xs.unflatten(-1, (self.nheads, self.headdim))
        B = B.unflatten(-1, (self.ngroups, self.d_state))
        C = C.unflatten(-1, (self.ngroups, self.d_state))
        A = -torch.exp(self.A_log.to(self.compute_dtype))
        ssm0 = None if state is None else state["ssm"]
        # The result does not depend on the chunk length; on CPU the quadratic intra-chunk part
        # dominates, and 64 measured fastest (chunk_size=256 is tuned for the GPU kernel).
        chunk = self.chunk_size if x.is_cuda else min(self.chunk_size, CPU_CHUNK)
        y, ssm = ssd_scan(xs.to(cdt), self._dt(dt), A, B.to(cdt), C.to(cdt), chunk_size=chunk,
                          initial_state=ssm0)
        y = y.to(cdt) + xs.to(cdt) * self._skip()
        out = self._output(y.flatten(-2), z, z0, x0).to(x.dtype)
        if state is None and not return_state:
            return out, None
        return out, self._finish_state(x, state, conv_state, ssm)

    def forward_triton(self, x: Tensor, state: MixerState | None = None, *, return_state: bool = False,
                       kernels: MambaTriton, conv_kernel: tuple[str, Any] | None = None
                       ) -> tuple[Tensor, MixerState | None]:
        """:meth:`forward` through mamba-ssm's Triton kernels (what CUDA inputs take; public so that the
        tests can run it under Triton's interpreter on CPU against the PyTorch path).

        The SSD scan applies ``dt_bias``, softplus, ``dt_limit`` and the ``D`` skip itself; without
        ``rmsnorm`` it also applies the ``silu(z)`` gate, with it the fused gated RMSNorm does.
        """
        z0, x0, z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv_state = causal_conv(xbc, None if state is None else state["conv"], self.conv1d.weight,
                                      self.conv1d.bias, kernel=conv_kernel)
        xs, B, C = torch.split(xbc, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        D = self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D
        kwargs: dict[str, Any] = {} if self.dt_limit is None else {"dt_limit": self.dt_limit}
        ssm0 = None if state is None else state["ssm"].float()
        y, ssm = kernels.chunk_scan(
            xs.unflatten(-1, (self.nheads, self.headdim)), dt, A, B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)), chunk_size=self.chunk_size, D=D,
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)), dt_bias=self.dt_bias,
            dt_softplus=True, initial_states=ssm0, return_final_states=True, **kwargs)
        y = y.flatten(-2)
        if self.norm is not None:
            y = kernels.gated_rmsnorm(y, self.norm.weight, None, z=z, eps=self.norm.eps,
                                      group_size=self.norm.group_size, norm_before_gate=self.norm_before_gate)
        if self.d_mlp > 0:  # mamba-ssm puts the gated-MLP part first
            y = torch.cat([F.silu(z0) * x0, y.to(z0.dtype)], dim=-1)
        # Under autocast y is already in the matmul dtype; a cast to the fp32 weight would copy it twice.
        out = self.out_proj(y if torch.is_autocast_enabled() else y.to(self.out_proj.weight.dtype)).to(x.dtype)
        if state is None and not return_state:
            return out, None
        return out, self._finish_state(x, state, conv_state, ssm)

    def step(self, x: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """One token: x ``(B, d_model)`` -> ``((B, d_model), new state)`` by the plain recurrence
        (mamba-ssm's Triton ``selective_state_update`` on CUDA)."""
        cdt = self.compute_dtype
        z0, x0, z, xbc, dt = self._split(self.in_proj(x))
        xbc, conv_state = causal_conv_step(xbc, state["conv"], self.conv1d.weight, self.conv1d.bias)
        xs, B, C = torch.split(xbc, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        tri = self._fast(x)
        if tri is not None:
            return self.step_triton(x, state, tri, (z0, x0, z, xs, B, C, dt), conv_state)
        xs = xs.to(cdt).unflatten(-1, (self.nheads, self.headdim))  # (b, h, p)
        rep = self.nheads // self.ngroups
        B = B.to(cdt).unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(rep, dim=1)  # (b, h, n)
        C = C.to(cdt).unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(rep, dim=1)
        dt = self._dt(dt)  # (b, h)
        dA = torch.exp(dt * -torch.exp(self.A_log.to(cdt)))
        ssm = state["ssm"].to(cdt) * dA[:, :, None, None] + (dt[:, :, None] * xs).unsqueeze(-1) * B[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", ssm, C) + xs * self._skip()
        out = self._output(y.flatten(-2), z, z0, x0).to(x.dtype)
        return out, {"conv": conv_state, "ssm": ssm.to(state["ssm"].dtype)}


    def step_triton(self, x: Tensor, state: MixerState, kernels: MambaTriton, parts: tuple[Tensor, ...],
                    conv_state: Tensor) -> tuple[Tensor, MixerState]:
        """The SSM part of :meth:`step` through ``selective_state_update`` (on a copy: the given state
        is not modified, as the Mixer contract requires)."""
        if self.dt_limit is not None:
            raise HSAError("Mamba2.step on CUDA with dt_limit is not supported by mamba-ssm's Triton state "
                           "update; set HSA_MAMBA_PATH=torch")
        z0, x0, z, xs, B, C, dt = parts
        h, p, n = self.nheads, self.headdim, self.d_state
        ssm = state["ssm"].float().clone()
        D = self.D.float().view(h, p) if self.D_has_hdim else self.D.float()[:, None].expand(h, p)
        y = kernels.state_update(
            ssm, xs.unflatten(-1, (h, p)), dt[:, :, None].expand(-1, h, p),
            (-torch.exp(self.A_log.float()))[:, None, None].expand(h, p, n),
            B.unflatten(-1, (self.ngroups, n)), C.unflatten(-1, (self.ngroups, n)), D,
            z=None if self.rmsnorm else z.unflatten(-1, (h, p)),
            dt_bias=self.dt_bias[:, None].expand(h, p), dt_softplus=True)
        y = y.flatten(-2)
        if self.norm is not None:
            y = kernels.gated_rmsnorm(y, self.norm.weight, None, z=z, eps=self.norm.eps,
                                      group_size=self.norm.group_size, norm_before_gate=self.norm_before_gate)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y.to(z0.dtype)], dim=-1)
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(x.dtype)
        return out, {"conv": conv_state, "ssm": ssm.to(state["ssm"].dtype)}


def build_mamba2(d_model: int, **options: Any) -> Mamba2:
    """Factory of the ``mamba2`` kind (options: :data:`MAMBA2_DEFAULTS`)."""
    return Mamba2(d_model, **options)
