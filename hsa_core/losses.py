"""Language-model losses that never materialise the full ``(N, V)`` logits.

:func:`linear_cross_entropy` fuses the LM head and the cross-entropy (Liger-Kernel's and fla's
"fused linear cross-entropy"): tokens are processed in chunks, and for each chunk the logits are
computed, turned into the loss and, while they are still in memory, into the gradients with respect
to the hidden states and the head weight. Only one chunk's logits exist at a time (``chunk x V`` in
fp32), and no logits are saved for backward, whose work is then a scaling by the incoming gradient.
For RAMba-370M at 16K tokens that is 0.4 GiB instead of 3.3 GiB of fp32 logits (plus their bf16
copy and the softmax gradient).

Why ours rather than fla's ``FusedLinearCrossEntropyLoss``: it is pure PyTorch, so it runs on every
device and in the CPU tests with the same code, needs no optional dependency for a Mamba-only model,
and keeps the matmuls in the autocast dtype (fla upcasts the weight-gradient product to fp32).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["linear_cross_entropy"]

IGNORE_INDEX = -100
#: compile the per-chunk softmax gradient on CUDA (``HSA_COMPILE_LOSS=0`` turns it off)
COMPILE_ON_CUDA = os.environ.get("HSA_COMPILE_LOSS", "1") != "0"


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


def _loss_and_grad(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: logits ``(c, V)`` (matmul dtype), targets ``(c,)`` -> (fp32 loss sum, d loss / d logits
    in the logits' dtype). ``softmax - onehot``, zero on ignored rows."""
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1)
    picked = lf.gather(1, safe[:, None]).squeeze(1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    onehot = torch.arange(lf.shape[1], device=lf.device)[None, :] == safe[:, None]
    grad = (torch.exp(lf - lse[:, None]) - onehot.float()) * valid[:, None]
    return loss, grad.to(logits.dtype)


@functools.lru_cache(maxsize=1)
def _compiled_loss_and_grad() -> Any:
    """:func:`_loss_and_grad` through ``torch.compile`` (CUDA): one reduction and one pointwise kernel
    over the chunk's logits instead of about eight passes in eager mode."""
    return torch.compile(_loss_and_grad, dynamic=True)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunk: int,  # type: ignore[override]
                needs_grad: bool) -> Tensor:
        cdt = _compute_dtype(x, weight)
        chunk_fn = _compiled_loss_and_grad() if (x.is_cuda and COMPILE_ON_CUDA) else _loss_and_grad
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(cdt)
            xs = x.to(cdt)
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            dx = torch.empty_like(xs) if needs_grad else None
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if needs_grad else None
            for start in range(0, x.shape[0], chunk):
                xc, tc = xs[start:start + chunk], targets[start:start + chunk]
                loss, g = chunk_fn(xc @ w.t(), tc)  # logits (c, V) in the matmul dtype
                total += loss
                if needs_grad:
                    dx[start:start + chunk] = g @ w  # type: ignore[index]
                    dw.add_((g.t() @ xc).float())  # type: ignore[union-attr]
        if needs_grad:
            ctx.save_for_backward(dx, dw)
        ctx.dtypes = (x.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        dx, dw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        return (dx * grad_out).to(x_dtype), (dw * grad_out).to(w_dtype), None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, *, chunk_size: int = 4096) -> Tensor:
    """Summed cross-entropy of ``softmax(hidden @ weight.T)`` against ``targets``, without full logits.

    Args:
        hidden: ``(N, d)`` final hidden states (after the last norm).
        weight: ``(V, d)`` LM head weight (the embedding when tied).
        targets: ``(N,)`` int64 class ids; ``-100`` rows are ignored (no loss, no gradient).
        chunk_size: tokens per chunk (peak extra memory ``chunk_size x V`` fp32).

    Returns:
        The fp32 scalar sum of the per-token losses (divide by the token count for the mean).
        Differentiable in ``hidden`` and ``weight``; matmuls run in the autocast dtype when autocast
        is on (as ``F.linear`` would), the softmax and the sums in fp32.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, d) and weight (V, d) expected, got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, needs_grad)
