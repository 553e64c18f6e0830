"""Pure-PyTorch building blocks of the Mamba backbones (the fast kernels: :mod:`hsa_backbones.fast_paths`).

Why these exist instead of calling existing torch paths (the issue asks to prefer those):

* mamba-ssm's references (``ssd_minimal_discrete``, ``selective_scan_ref``) live in modules whose
  import pulls in the package ``mamba_ssm/__init__``, which needs the compiled CUDA extension, so they
  cannot be imported on a CPU machine (loading the file by path still executes those imports);
  ``ssd_minimal_discrete`` also needs ``T % block_len == 0`` and ``selective_scan_ref`` has no initial
  state, and segment-wise processing needs both.
* transformers' ``Mamba2Mixer.torch_forward`` / ``MambaMixer.slow_forward`` are private functions of a
  package that is not a core dependency (it only comes with the ``fla`` extra), they change between
  releases (5.17 on the GPU image, 5.24 here), and Mamba1's torch path has no initial state either.

So this module holds a compact chunked SSD scan with an initial state (the algorithm of the SSD
paper's minimal listing: intra-chunk quadratic form + inter-chunk state passing) and a selective
scan for Mamba1. The tests compare both against token-by-token recurrences written independently,
and against transformers' torch path where it is installed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# -- causal depthwise convolution with carried state ---------------------------------------------------
def causal_conv(x: Tensor, conv_state: Tensor | None, weight: Tensor, bias: Tensor | None,
                kernel: tuple[str, Callable] | None = None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv + SiLU continuing from ``conv_state``.

    Args:
        x: ``(B, T, C)`` new inputs.
        conv_state: ``(B, C, W)`` the last ``W`` inputs seen (mamba-ssm's layout; zeros at the start),
            or ``None`` for zeros.
        weight: ``(C, 1, W)`` ``nn.Conv1d`` depthwise weight; bias ``(C,)``.
        kernel: a fused kernel from :func:`hsa_backbones.fast_paths.causal_conv_kernel` (``("fla", fn)``
            or ``("causal-conv1d", fn)``), or ``None`` for PyTorch (cuDNN on CUDA).

    Returns:
        ``(silu(conv(x)) (B, T, C), new conv_state (B, C, W))``.
    """
    b, _, c = x.shape
    width = weight.shape[-1]
    if kernel is not None and kernel[0] == "fla":
        # fla's Triton conv reads (B, T, C) in place and carries the state itself (same layout).
        y, new_state = kernel[1](x, weight.squeeze(1), bias, initial_state=None if conv_state is None
                                 else conv_state.to(x.dtype), output_final_state=True, activation="silu")
        return y, new_state
    xt = x.transpose(1, 2)  # (B, C, T)
    if conv_state is None:
        conv_state = xt.new_zeros(b, c, width)
    else:
        conv_state = conv_state.to(xt.dtype)
    # Prepending the last W - 1 inputs turns "continue from a state" into a plain valid convolution.
    full = torch.cat([conv_state[:, :, 1:], xt], dim=-1)  # (B, C, W - 1 + T)
    if kernel is not None:  # causal-conv1d: (B, C, T) in, the W - 1 prepended inputs cut off after
        y = kernel[1](full.contiguous(), weight.squeeze(1), bias, activation="silu")[..., width - 1:]
    elif x.is_cuda:
        y = F.silu(F.conv1d(full, weight, bias, groups=c))
    else:
        # On CPU, depthwise conv1d's backward (oneDNN) is ~100x slower than the W shifted multiply-adds
        # (4.3 s vs tens of ms at B=8, T=512, C=256), so the taps are summed explicitly.
        t = xt.shape[-1]
        w = weight.squeeze(1)  # (C, W)
        y = full[:, :, 0:t] * w[:, 0, None]
        for k in range(1, width):
            y = torch.addcmul(y, full[:, :, k:k + t], w[:, k, None])
        if bias is not None:
            y = y + bias[:, None]
        y = F.silu(y)
    # From the last W inputs only, and contiguous: a slice of the whole (B, C, W + T) concatenation
    # would keep the segment's inputs alive in the carried state.
    new_state = torch.cat([conv_state, xt[:, :, -width:]], dim=-1)[:, :, -width:].contiguous()
    return y.transpose(1, 2), new_state


def causal_conv_step(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """One token of :func:`causal_conv`: x ``(B, C)``, conv_state ``(B, C, W)`` -> ``((B, C), new state)``."""
    new_state = torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    y = (new_state * weight.squeeze(1)).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y).to(x.dtype), new_state


# -- gated RMSNorm (mamba-ssm's ``layernorm_gated.RMSNorm``) -------------------------------------------
class GatedRMSNorm(nn.Module):
    """Group-wise RMSNorm with a SiLU gate, parameter- and math-compatible with mamba-ssm's.

    ``norm_before_gate=False`` (Mamba2's default): ``rmsnorm(x * silu(z)) * weight``; ``True``:
    ``rmsnorm(x) * weight * silu(z)``. The RMS is taken over groups of ``group_size`` channels.
    Computed in fp32. x, z ``(..., hidden)``.
    """

    def __init__(self, hidden: int, *, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps, self.group_size, self.norm_before_gate = eps, group_size or hidden, norm_before_gate

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        x = x.to(wide)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(wide))
        groups = x.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        out = groups.flatten(-2) * self.weight.to(wide)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(wide))
        return out.to(dtype)


# -- Mamba2: chunked SSD scan ----------------------------------------------------------------------------
def _segsum(a: Tensor) -> Tensor:
    """``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for ``i >= j``, ``-inf`` above the diagonal.

    Built by a masked cumulative sum rather than as a difference of two cumsums: used across chunks,
    where the cumulative decays can be large and a difference would lose precision by cancellation.
    a ``(..., L)`` -> ``(..., L, L)``.
    """
    n = a.shape[-1]
    rows = a.unsqueeze(-1).expand(*a.shape, n)  # rows[..., k, j] = a[k]
    strictly_lower = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)
    seg = rows.masked_fill(~strictly_lower, 0.0).cumsum(dim=-2)  # sum over j < k <= i
    lower = torch.ones(n, n, dtype=torch.bool, device=a.device).tril()
    return seg.masked_fill(~lower, float("-inf"))


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int,
             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The Mamba2 (SSD) recurrence, chunked: ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t``.

    Within a chunk the outputs come from the quadratic (attention-like) form masked by the decays;
    across chunks only the ``(H, P, N)`` states are passed. The result does not depend on
    ``chunk_size`` (up to rounding).

    Args:
        x: ``(B, T, H, P)`` inputs (fp32 recommended).
        dt: ``(B, T, H)`` step sizes, already through softplus (``>= 0``).
        A: ``(H,)`` negative decay rates.
        B, C: ``(B, T, G, N)`` input/output projections; head ``h`` uses group ``h // (H // G)``.
        chunk_size: chunk length ``L``; ``T`` is padded up to a multiple of it internally.
        initial_state: ``(B, H, P, N)`` state before the first token, or ``None`` for zeros.

    Returns:
        ``y (B, T, H, P)`` (without the ``D`` skip) and the final state ``(B, H, P, N)``.
    """
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    B = B.repeat_interleave(h // g, dim=2)  # (b, t, h, n)
    C = C.repeat_interleave(h // g, dim=2)
    length = min(chunk_size, t)
    pad = (-t) % length
    if pad:  # dt = 0 on padding: no decay and no input, so the final state is unaffected
        x, dt, B, C = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, B, C))
    nc = x.shape[1] // length
    u = (x * dt.unsqueeze(-1)).view(b, nc, length, h, p)  # discretised input
    a = (dt * A).view(b, nc, length, h).permute(0, 3, 1, 2)  # (b, h, c, l) log-decays
    Bc, Cc = B.reshape(b, nc, length, h, n), C.reshape(b, nc, length, h, n)
    a_cum = a.cumsum(dim=-1)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1} + ... + a_i) u_j. The exponent is
    # taken as a difference of cumulative sums, as mamba-ssm's kernels do: within one chunk the
    # cancellation is harmless and it is much cheaper than a masked (l x l) cumsum on CPU.
    lower = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~lower, float("-inf")))
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, u)

    # 2. Each chunk's own contribution to the state at its end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, l)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, u)

    # 3. Pass states across chunks (a small c x c decay matrix, so no Python loop over chunks).
    if initial_state is None:
        initial_state = u.new_zeros(b, h, p, n)
    states = torch.cat([initial_state.to(u.dtype).unsqueeze(1), chunk_states], dim=1)  # (b, c+1, h, p, n)
    chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    # final copied: a view would keep every chunk's state alive in the carried state
    entering, final = states[:, :-1], states[:, -1].clone()

    # 4. The state entering each chunk, decayed to each position, read out by C.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(a_cum))
    return y.reshape(b, nc * length, h, p)[:, :t], final


# -- Mamba1: selective scan --------------------------------------------------------------------------------
def selective_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
                   initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba1's recurrence ``h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t``, ``y_t = h_t C_t`` (per channel).

    A diagonal ``(D, N)`` decay differs per state channel, so SSD's chunked quadratic form would need a
    ``(L, L, D, N)`` tensor per chunk; on CPU a single fused multiply-add per token over precomputed
    ``exp(dt A)`` and ``dt u B`` is cheaper than a log-depth parallel scan (which does
    ``O(T log T)`` work and saves every level for backward). Everything except that one multiply-add is
    vectorised over the sequence.

    Args:
        u: ``(B, T, D)``; dt: ``(B, T, D)`` after softplus; A: ``(D, N)`` negative;
        B, C: ``(B, T, N)``; initial_state: ``(B, D, N)`` or ``None``.

    Returns:
        ``y (B, T, D)`` (without the ``D`` skip and the gate) and the final state ``(B, D, N)``.
    """
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (b, t, d, n)
    dBu = (dt * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, t, d, n)
    h = initial_state.to(dA.dtype) if initial_state is not None else dA.new_zeros(dA[:, 0].shape)
    states = []
    # unbind, not dA[:, i]: the backward of each indexing op would write a full-size (B, T, D, N)
    # gradient, making the backward quadratic in T; unbind's backward is one stack.
    for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
        h = torch.addcmul(dBu_t, dA_t, h)
        states.append(h)
    y = torch.einsum("btdn,btn->btd", torch.stack(states, dim=1), C)
    return y, h
