"""Functional HSA: selection (:func:`hsa_select`) and sparse chunk attention (:func:`hsa_attention`);
:func:`gather_rows`, the offloaded chunk store's copy of selected chunks into the compute device.

Both are exact against the spec and differentiable (weights get gradients, indices do not). They
dispatch to Triton kernels on CUDA and to the pure-PyTorch reference elsewhere
(:mod:`hsa_core.ops.dispatch`); both live in :mod:`hsa_kernels` (each op folder's ``naive.py`` is the
reference).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .dispatch import KERNEL_OPS, backend_for, triton_impl
from .reference import fusion_weights, gather_rows_naive, hsa_attention_torch, hsa_select_torch, visible_chunks

WEIGHTINGS = ("stick_breaking", "softmax")

__all__ = ["KERNEL_OPS", "WEIGHTINGS", "backend_for", "fusion_weights", "gather_rows", "hsa_attention",
           "hsa_select", "hsa_select_windows", "visible_chunks"]


def _check_selection(weighting: str, topk: int, scale: float | None = None) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if scale is not None and not scale > 0:  # (also refuses NaN)
        raise ValueError(f"scale must be positive (a score scale; <= 0 would invert or flatten the ranking), "
                         f"got {scale}")


def hsa_select(
    q_r: Tensor,
    landmarks: Tensor,
    *,
    topk: int,
    chunk_size: int,
    q_offset: int = 0,
    weighting: str = "stick_breaking",
    scale: float | None = None,
    window: int | None = None,
    gumbel: bool = False,
) -> tuple[Tensor, Tensor]:
    """Choose the top-k visible chunks per token and their fusion weights.

    Args:
        q_r: ``(B, T, H_r, d_rh)`` retrieval queries.
        landmarks: ``(B, C, H_r, d_rh)`` one summary per complete chunk.
        topk: chunks kept per token (fewer are visible early on: empty slots get -1).
        chunk_size: S; chunk ``i`` is visible to absolute position ``p = q_offset + t`` iff
            ``(i+1)*S <= p``.
        q_offset: absolute position of ``q_r[:, 0]`` (segment-wise processing, decoding).
        weighting: ``"stick_breaking"`` (recency order, sum <= 1) or ``"softmax"``.
        scale: score scale (> 0), default ``d_rh ** -0.5``.
        window: hide chunks a sliding window of this width already covers.
        gumbel: add Gumbel noise to the scores used to *choose* (training); weights use clean scores.

    Returns:
        ``indices`` int32 ``(B, T, H_r, topk)``, chunk ids sorted descending, -1 for empty slots;
        ``weights`` fp32 ``(B, T, H_r, topk)``, 0 on empty slots.
    """
    _check_selection(weighting, topk, scale)
    if q_r.shape[-1] != landmarks.shape[-1] or q_r.shape[2] != landmarks.shape[2]:
        raise ValueError(f"q_r {tuple(q_r.shape)} and landmarks {tuple(landmarks.shape)} disagree on (H_r, d_rh)")
    kwargs = dict(topk=topk, chunk_size=chunk_size, q_offset=q_offset, weighting=weighting, scale=scale,
                  window=window, gumbel=gumbel)
    if backend_for("hsa_select", q_r.device) == "triton":
        return triton_impl("hsa_select")(q_r, landmarks, **kwargs)
    return hsa_select_torch(q_r, landmarks, **kwargs)


def hsa_select_windows(q_r: Tensor, windows: Iterable[tuple[int, Tensor]], *, topk: int, chunk_size: int,
                       q_offset: int = 0, weighting: str = "stick_breaking", scale: float | None = None,
                       window: int | None = None) -> tuple[Tensor, Tensor]:
    """:func:`hsa_select` over landmarks that arrive in windows (inference: no gradient, no Gumbel noise).

    Args:
        windows: ``(first chunk id, landmarks (B, n, H_r, d_rh))`` pairs covering chunks ``0 .. C-1``
            without gaps, on ``q_r``'s device; each is read before the next is taken (a generator may
            copy every window into one buffer: an offloaded memory's host landmarks,
            :meth:`hsa_core.modules.offload.ChunkStore.landmark_windows`).

    Returns:
        The same indices and weights as :func:`hsa_select` over the windows put together: the Triton
        kernel merges each window's top-k (exact keys); the reference concatenates them.
    """
    _check_selection(weighting, topk, scale)
    kwargs = dict(topk=topk, chunk_size=chunk_size, q_offset=q_offset, weighting=weighting, scale=scale,
                  window=window)
    if backend_for("hsa_select", q_r.device) == "triton":
        from hsa_kernels.hsa_select import hsa_select_windows_triton

        return hsa_select_windows_triton(q_r, windows, **kwargs)
    parts = sorted(((c0, lm.clone()) for c0, lm in windows), key=lambda part: part[0])
    B, _, Hr, dr = q_r.shape
    landmarks = torch.cat([lm for _, lm in parts], 1) if parts else q_r.new_zeros((B, 0, Hr, dr))
    return hsa_select_torch(q_r, landmarks, **kwargs)


def hsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    weights: Tensor,
    *,
    chunk_size: int,
    scale: float | None = None,
    sink: bool = False,
) -> Tensor:
    """Attention inside each chosen chunk, fused by the selection weights.

    Args:
        q: ``(B, T, HQ, D)`` queries (no positional encoding).
        k, v: ``(B, C*S, H, D)`` chunked keys and values; ``HQ % H == 0`` (G = HQ/H query heads share
            one KV head and its selection).
        indices: ``(B, T, H, topk)`` chosen chunk ids, -1 = empty slot (contributes nothing).
        weights: ``(B, T, H, topk)`` fusion weights (fp32 preferred).
        chunk_size: S.
        scale: logit scale, default ``D ** -0.5``.
        sink: add one logit fixed at 0 with a zero value to every chunk's softmax.

    Returns:
        ``(B, T, HQ, D)`` in ``q``'s dtype: ``sum_j w_j * softmax(q K_c^T * scale) V_c``.
    """
    B, T, HQ, D = q.shape
    if k.shape != v.shape or k.dim() != 4 or k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B, C*S, H, D) with B={B}, D={D}")
    H = k.shape[2]
    if HQ % H:
        raise ValueError(f"query heads HQ={HQ} must be a multiple of KV heads H={H}")
    if k.shape[1] % chunk_size:
        raise ValueError(f"k has {k.shape[1]} tokens, not a multiple of chunk_size={chunk_size}")
    if indices.shape != weights.shape or tuple(indices.shape[:3]) != (B, T, H):
        raise ValueError(f"indices {tuple(indices.shape)} and weights {tuple(weights.shape)} must be (B, T, H, topk)")
    kwargs = dict(chunk_size=chunk_size, scale=scale, sink=sink)
    if backend_for("hsa_attention", q.device) == "triton":
        return triton_impl("hsa_attention")(q, k, v, indices, weights, **kwargs)
    return hsa_attention_torch(q, k, v, indices, weights, **kwargs)


def gather_rows(src: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of ``src`` on ``index``'s device (no autograd).

    Args:
        src: ``(R, ...)`` contiguous rows, typically pinned host memory (the offloaded chunk K/V).
        index: ``(N,)`` integer row ids in ``[0, R)`` on the compute device.

    Returns:
        ``(N, ...)`` on ``index.device`` with ``src``'s dtype. On CUDA a Triton kernel reads the rows
        straight from pinned host memory; elsewhere (and with ``HSA_BACKEND=torch``) ``index_select``
        and a copy.
    """
    if backend_for("host_gather", index.device) == "triton":
        return triton_impl("host_gather")(src, index)
    return gather_rows_naive(src, index)
