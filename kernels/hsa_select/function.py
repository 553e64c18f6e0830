"""Autograd function and entry point of the fused Triton selection.

``hsa_select_triton(q_r, landmarks, *, topk, chunk_size, q_offset=0, weighting, scale=None,
window=None, gumbel=False) -> (indices int32 (B,T,Hr,K), weights fp32 (B,T,Hr,K))``, the contract of
:func:`hsa_core.ops.hsa_select`. Gumbel noise (training-time exploration) falls back to the reference.

Backward: top-k has no gradient; the weights' gradient goes to the kept scores through the fusion
formula (recomputed in torch on the (B,T,Hr,K) scores the kernel saved), then to q_r and the landmarks
through the kept landmarks only (gather / index_add), so memory stays O(T * K * dr / blocks).
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from hsa_core.ops.reference import fusion_weights, hsa_select_torch

from .kernels import _hsa_select_kernel

# Measured on the H200 at T=128K, d_r=1024 (bench/results/h200/sweep1.log): 128x128 tiles, 8 warps, 3 stages.
CONFIG = {"block_t": 128, "block_c": 128, "block_d": 64, "warps": 8, "stages": 3, "merge": 1}

# Tokens per block of the gather-based backward (bounds its (Tb, K, dr) temporaries).
_BWD_TOKENS = 8192


def _launch(q_r: Tensor, landmarks: Tensor, topk: int, chunk_size: int, q_offset: int, stick: bool, scale: float,
            window: int | None) -> tuple[Tensor, Tensor, Tensor]:
    B, T, Hr, dr = q_r.shape
    C = landmarks.shape[1]
    dev = q_r.device
    idx = torch.empty((B, T, Hr, topk), device=dev, dtype=torch.int32)
    w = torch.empty((B, T, Hr, topk), device=dev, dtype=torch.float32)
    s = torch.empty((B, T, Hr, topk), device=dev, dtype=torch.float32)
    shift = 0 if window is None else max(window - chunk_size, 0)
    bt = min(CONFIG["block_t"], max(16, triton.next_power_of_2(T)))
    bc = min(CONFIG["block_c"], max(16, triton.next_power_of_2(C)))
    bd = min(CONFIG["block_d"], max(16, triton.next_power_of_2(dr)))
    kp = max(triton.next_power_of_2(topk), 2)
    if kp > bc:
        bc = kp
    prec = "ieee" if q_r.dtype == torch.float32 else "tf32"
    _hsa_select_kernel[(triton.cdiv(T, bt), B * Hr)](
        q_r, landmarks, idx, w, s,
        T, C, Hr, dr, q_offset, shift,
        q_r.stride(0), q_r.stride(1), q_r.stride(2),
        landmarks.stride(0), landmarks.stride(1), landmarks.stride(2),
        scale,
        S=chunk_size, TOPK=topk, KP=kp, BLOCK_T=bt, BLOCK_C=bc, BLOCK_D=bd, STICK=stick, PREC=prec,
        MERGE=CONFIG["merge"],
        num_warps=CONFIG["warps"], num_stages=CONFIG["stages"],
    )
    return idx, w, s


class HSASelectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_r, landmarks, topk, chunk_size, q_offset, weighting, scale, window):
        idx, w, s = _launch(q_r, landmarks, topk, chunk_size, q_offset, weighting == "stick_breaking", scale,
                            window)
        ctx.save_for_backward(q_r, landmarks, idx, s)
        ctx.weighting, ctx.scale = weighting, scale
        ctx.mark_non_differentiable(idx)
        return idx, w

    @staticmethod
    def backward(ctx, _didx, dw):
        q_r, landmarks, idx, s = ctx.saved_tensors
        valid = idx >= 0
        with torch.enable_grad():
            sv = s.detach().requires_grad_()
            w = fusion_weights(sv, valid, ctx.weighting)
            (ds,) = torch.autograd.grad(w, sv, dw)
        ds = torch.where(valid, ds, torch.zeros_like(ds)) * ctx.scale  # (B,T,Hr,K) fp32
        B, T, Hr, dr = q_r.shape
        C = landmarks.shape[1]
        dq = torch.empty_like(q_r, dtype=torch.float32)
        dl = torch.zeros((B * C * Hr, dr), device=q_r.device, dtype=torch.float32)
        lm = landmarks.float()
        safe = idx.clamp(min=0).long()
        bh_base = (torch.arange(B, device=q_r.device)[:, None, None, None] * C * Hr
                   + torch.arange(Hr, device=q_r.device)[None, None, :, None])
        flat = (bh_base + safe * Hr)  # row of landmarks.reshape(B*C*Hr, dr)
        lm_rows = lm.reshape(B * C * Hr, dr)
        for t0 in range(0, T, _BWD_TOKENS):
            t1 = min(T, t0 + _BWD_TOKENS)
            f = flat[:, t0:t1]
            d = ds[:, t0:t1]  # (B,Tb,Hr,K)
            g = lm_rows[f.reshape(-1)].view(*f.shape, dr)  # kept landmarks only
            dq[:, t0:t1] = torch.einsum("bthk,bthkd->bthd", d, g)
            contrib = d[..., None] * q_r[:, t0:t1, :, None, :].float()
            # index_add_ accumulates with atomics on CUDA (run-to-run differences in the last bits);
            # under torch.use_deterministic_algorithms(True) PyTorch switches it to its deterministic
            # (sorted) implementation, so users who need bitwise-reproducible training get it there.
            dl.index_add_(0, f.reshape(-1), contrib.reshape(-1, dr))
        return dq.to(q_r.dtype), dl.view(B, C, Hr, dr).to(landmarks.dtype), None, None, None, None, None, None


def hsa_select_triton(q_r: Tensor, landmarks: Tensor, *, topk: int, chunk_size: int, q_offset: int = 0,
                      weighting: str = "stick_breaking", scale: float | None = None, window: int | None = None,
                      gumbel: bool = False) -> tuple[Tensor, Tensor]:
    """Fused selection; same contract as :func:`hsa_core.ops.hsa_select`.

    Args:
        q_r: ``(B, T, Hr, dr)`` retrieval queries; landmarks: ``(B, C, Hr, dr)``.
    Returns:
        ``indices`` int32 ``(B, T, Hr, topk)`` sorted descending, -1 last; ``weights`` fp32, 0 on empty slots.
    """
    B, T, Hr, dr = q_r.shape
    C = landmarks.shape[1]
    kwargs = dict(topk=topk, chunk_size=chunk_size, q_offset=q_offset, weighting=weighting, scale=scale,
                  window=window, gumbel=gumbel)
    if gumbel or T == 0 or C == 0 or B * Hr == 0 or topk > 64:
        return hsa_select_torch(q_r, landmarks, **kwargs)
    scale = dr**-0.5 if scale is None else float(scale)
    q_r = q_r if q_r.stride(-1) == 1 else q_r.contiguous()
    landmarks = landmarks if landmarks.stride(-1) == 1 else landmarks.contiguous()
    return HSASelectFunction.apply(q_r, landmarks, topk, chunk_size, q_offset, weighting, scale, window)


__all__ = ["CONFIG", "HSASelectFunction", "hsa_select_triton"]
