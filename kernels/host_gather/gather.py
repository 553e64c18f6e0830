"""Row gather read by the GPU straight from pinned host memory (no autograd: inference only).

``gather_rows_triton(src (R, ...), index (N,)) -> (N, ...)`` on ``index``'s device: row ``n`` of the
result is row ``index[n]`` of ``src``.

Why a kernel: the offloaded chunk store keeps chunk K/V in pinned host memory. Copying the chunks a
segment selects through a host staging buffer costs a CPU gather (one memcpy per chunk, at host
memory speed, on one process's threads) and then a second copy over PCIe. Pinned memory is mapped
into the GPU's address space (unified addressing: the same pointer on host and device), so a kernel
on the compute stream can read the selected rows directly. The rows then cross PCIe once, and the
host thread never touches them. Each program copies one ``BLOCK`` of one row with coalesced loads.
Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors (how CI tests it).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _gather_rows_kernel(src, index, dst, ROW: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    part = tl.program_id(1)
    row = tl.load(index + n).to(tl.int64)
    offs = part * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ROW
    values = tl.load(src + row * ROW + offs, mask=mask)
    tl.store(dst + n.to(tl.int64) * ROW + offs, values, mask=mask)


def gather_rows_triton(src: Tensor, index: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Rows ``index`` of ``src`` on ``index.device``; ``src`` may be pinned host memory (read by the GPU).

    Args:
        src: ``(R, ...)`` contiguous rows: pinned host memory or memory of ``index``'s device.
        index: ``(N,)`` row ids in ``[0, R)``, on the compute device (not checked: reading them back to
            check would synchronise).
        out: optional ``(N, ...)`` destination on ``index``'s device with ``src``'s dtype.

    Raises:
        ValueError: ``src`` is not contiguous, is host memory that is not pinned while ``index`` is on
            CUDA, or ``out`` has the wrong shape, dtype or device.
    """
    if not src.is_contiguous():
        raise ValueError("gather_rows_triton: src must be contiguous")
    if index.dim() != 1:
        raise ValueError(f"gather_rows_triton: index must be 1-D, got shape {tuple(index.shape)}")
    if index.is_cuda and not src.is_cuda and not src.is_pinned():
        raise ValueError("gather_rows_triton: host rows must be in pinned memory for the GPU to read them")
    shape = (index.shape[0], *src.shape[1:])
    if out is None:
        out = torch.empty(shape, dtype=src.dtype, device=index.device)
    elif tuple(out.shape) != shape or out.dtype != src.dtype or out.device != index.device or not out.is_contiguous():
        raise ValueError(f"gather_rows_triton: out must be a contiguous {shape} {src.dtype} tensor on {index.device}")
    row = math.prod(src.shape[1:])
    if index.shape[0] == 0 or row == 0:
        return out
    block = min(4096, triton.next_power_of_2(row))
    grid = (index.shape[0], triton.cdiv(row, block))
    with torch.cuda.device(index.device) if index.is_cuda else nullcontext():
        _gather_rows_kernel[grid](src, index.contiguous(), out, ROW=row, BLOCK=block, num_warps=4)
    return out


__all__ = ["gather_rows_triton"]
