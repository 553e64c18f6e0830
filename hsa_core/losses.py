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

import torch
from torch import Tensor

__all__ = ["linear_cross_entropy"]

IGNORE_INDEX = -100


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunk: int,  # type: ignore[override]
                needs_grad: bool) -> Tensor:
        cdt = _compute_dtype(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(cdt)
            xs = x.to(cdt)
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            dx = torch.empty_like(xs) if needs_grad else None
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if needs_grad else None
            for start in range(0, x.shape[0], chunk):
                xc, tc = xs[start:start + chunk], targets[start:start + chunk]
                logits = (xc @ w.t()).float()  # (c, V)
                lse = torch.logsumexp(logits, dim=-1)
                valid = tc != IGNORE_INDEX
                safe = tc.clamp(min=0)
                picked = logits.gather(1, safe[:, None]).squeeze(1)
                total += torch.where(valid, lse - picked, 0.0).sum()
                if needs_grad:
                    # d(loss)/d(logits) = softmax - onehot (0 on ignored rows), built in place
                    grad = logits.sub_(lse[:, None]).exp_()
                    grad.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
                    grad.mul_(valid[:, None])
                    g = grad.to(cdt)
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
