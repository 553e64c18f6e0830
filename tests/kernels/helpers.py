"""Shared helpers of the kernel tests: random selections, relative errors, poisoned allocations."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rel_err(a: Tensor, ref: Tensor) -> float:
    """||a - ref|| / ||ref|| in fp64 (NaN anywhere -> inf)."""
    a, ref = a.double(), ref.double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def random_selection(B: int, T: int, H: int, K: int, S: int, device="cpu", q_offset: int = 0,
                     empty_frac: float = 0.0, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Causal random selection: per (b, t, h) up to K distinct visible chunks, sorted descending, -1 last;
    weights random in (0, 1) (0 on empty slots). ``empty_frac`` of the slots are additionally emptied."""
    pos = torch.arange(T, device=device) + q_offset
    nvis = (pos // S).clamp(min=0)  # visible chunks: i < pos // S
    r = torch.rand(B, T, H, int(nvis.max().item()) + K + 1, device=device, generator=gen)
    cand = torch.arange(r.shape[-1], device=device)
    r = r.masked_fill(cand[None, None, None, :] >= nvis[None, :, None, None], -1.0)
    top = r.topk(K, dim=-1)
    idx = torch.where(top.values >= 0, top.indices, torch.full_like(top.indices, -1))
    if empty_frac > 0:
        drop = torch.rand(idx.shape, device=device, generator=gen) < empty_frac
        idx = idx.masked_fill(drop, -1)
    idx = idx.sort(dim=-1, descending=True).values.to(torch.int32)
    w = torch.rand(idx.shape, device=device, generator=gen) * (idx >= 0)
    return idx, w


def one_chunk_case(B: int, T: int, HQ: int, H: int, D: int, S: int, K: int, device="cpu",
                   every_slot_rows: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A selection over a single chunk (C = 1): random slots in {-1, 0}, every 4th row all empty, the
    next ones with chunk 0 in slot 0, and (``every_slot_rows``) the row after with chunk 0 in every slot,
    so one program adds several contributions to the same output row. Weights of empty slots are
    random: kernels must ignore them. Returns ``q, k, v, idx, w``."""
    q = torch.randn(B, T, HQ, D, device=device)
    k = torch.randn(B, S, H, D, device=device)
    v = torch.randn(B, S, H, D, device=device)
    idx = torch.randint(-1, 1, (B, T, H, K), dtype=torch.int32, device=device)
    idx[:, ::4] = -1  # all-empty rows
    idx[:, 1::4, :, 0] = 0
    if every_slot_rows:
        idx[:, 2::4] = 0
    w = torch.rand(B, T, H, K, device=device)
    return q, k, v, idx, w


class PoisonTorch:
    """Stand-in for the ``torch`` module inside a kernel wrapper: fresh buffers come back filled with
    NaN (float) or -7 (int), so any element a kernel forgets to write shows up in the result."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t: Tensor) -> Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))
