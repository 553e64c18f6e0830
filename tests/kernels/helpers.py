"""Shared helpers of the kernel tests: shapes, random selections, the fp64-twin comparison, poisoned
allocations. Test modules import from here only (never from each other)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from hsa_kernels.hsa_attention import hsa_attention_naive, hsa_attention_triton
from torch import Tensor

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Shape:
    """One attention case: batch, tokens, query heads, KV heads, head dim, chunk size, slots, sink."""

    B: int
    T: int
    HQ: int
    H: int
    D: int
    S: int
    K: int
    sink: bool = False


#: The interpreter-sized attention cases, by the corner each covers (ids through ``pytest.param`` there).
SMALL_SHAPES: dict[str, Shape] = {
    "G16-oddT": Shape(B=1, T=37, HQ=16, H=1, D=32, S=16, K=3),
    "G3-padded-rows-sink-B2": Shape(B=2, T=41, HQ=3, H=1, D=16, S=16, K=2, sink=True),
    "G1-two-kv-heads": Shape(B=1, T=45, HQ=2, H=2, D=32, S=16, K=4),
    "D24-K3-not-pow2": Shape(B=1, T=33, HQ=4, H=1, D=24, S=16, K=3),
    "S24-not-pow2-sink": Shape(B=1, T=40, HQ=2, H=1, D=16, S=24, K=2, sink=True),
    "S8-below-dot-minimum": Shape(B=1, T=35, HQ=2, H=1, D=16, S=8, K=3),  # BLOCK_S padded to 16
}


def grid_randn(*shape: int, generator: torch.Generator, steps: int = 8) -> Tensor:
    """Roughly normal fp32 values on a grid of ``1 / steps`` (|x| <= 3): their products and sums over a
    head dim of up to 64 are exact in fp32, so equal landmarks score bit-equal in any summation order.
    Tests of exact ties need this: a BLAS (the interpreter's ``tl.dot``) rounds a tile's edge columns
    differently from its inner ones (OpenBLAS's AVX-512 and AVX kernels do; CI's CPU picks one)."""
    return (torch.randn(*shape, generator=generator) * steps).round().clamp(-3 * steps, 3 * steps) / steps


def rel_err(a: Tensor, ref: Tensor) -> float:
    """||a - ref|| / ||ref|| in fp64 (NaN anywhere -> inf)."""
    a, ref = a.double(), ref.double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def random_selection(B: int, T: int, H: int, K: int, S: int, device=DEV, q_offset: int = 0,
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


def shared_selection(*, B: int, T: int, H: int, K: int, S: int, block_tokens: int, device: str = DEV,
                     empty_frac: float = 0.0) -> tuple[Tensor, Tensor]:
    """One causal random selection per block of ``block_tokens`` tokens, visible to all of them (drawn
    for the block's first token), with per-token random weights: neighbouring tokens share chunks.
    ``B, T, H, K, S`` as in :class:`Shape` (batch, tokens, KV heads, slots, chunk size)."""
    idx, _ = random_selection(B=B, T=T, H=H, K=K, S=S, device=device, empty_frac=empty_frac)
    first = (torch.arange(T, device=device) // block_tokens) * block_tokens
    idx = idx[:, first].contiguous()
    w = torch.rand(idx.shape, device=device) * (idx >= 0)
    return idx, w


def attention_inputs(shape: Shape, dtype: torch.dtype, *, extra_chunks: int = 1, empty_frac: float = 0.0,
                     q_scale: float = 1.0, device=DEV) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``q, k, v`` in ``dtype`` over ``T // S + extra_chunks`` chunks and a random causal selection."""
    B, T, HQ, H, D, S, K = shape.B, shape.T, shape.HQ, shape.H, shape.D, shape.S, shape.K
    C = T // S + extra_chunks
    q = (torch.randn(B, T, HQ, D, device=device) * q_scale).to(dtype)
    k = torch.randn(B, C * S, H, D, device=device).to(dtype)
    v = torch.randn(B, C * S, H, D, device=device).to(dtype)
    idx, w = random_selection(B, T, H, K, S, device=device, empty_frac=empty_frac)
    return q, k, v, idx, w


def one_chunk_case(*, B: int, T: int, HQ: int, H: int, D: int, S: int, K: int, device: str = DEV,
                   every_slot_rows: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A selection over a single chunk (C = 1): random slots in {-1, 0}, every 4th row all empty, the
    next ones with chunk 0 in slot 0, and (``every_slot_rows``) the row after with chunk 0 in every slot,
    so one program adds several contributions to the same output row. Weights of empty slots are
    random: kernels must ignore them. Sizes as in :class:`Shape`; returns ``q, k, v, idx, w``."""
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


def run_attention(q, k, v, idx, w, S: int, sink: bool, fn_attn=hsa_attention_triton, dtype=None, do=None,
                  **kw: Any) -> tuple[Tensor, list[Tensor], Tensor]:
    """``fn_attn`` forward and backward on leaf copies (cast to ``dtype``): ``(o, [dq, dk, dv, dw], do)``."""
    xs = [(x if dtype is None else x.to(dtype)).detach().clone().requires_grad_() for x in (q, k, v, w)]
    o = fn_attn(xs[0], xs[1], xs[2], idx, xs[3], chunk_size=S, sink=sink, **kw)
    if do is None:
        do = torch.randn_like(o, dtype=torch.float32)
    o.backward(do.to(o.dtype))
    return o, [x.grad for x in xs], do


def assert_matches_naive(q, k, v, idx, w, S: int, sink: bool, tol: float, o: Tensor, grads: list[Tensor],
                         do: Tensor) -> None:
    """``o`` and ``grads`` (dq, dk, dv, dw of a Triton run with upstream ``do``) within ``tol`` of the fp64 twin."""
    ro, rgrads, _ = run_attention(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.float64, do=do.double())
    errs = {"o": rel_err(o, ro)} | {n: rel_err(g, r) for n, g, r in zip("qkvw", grads, rgrads)}
    assert all(e < tol for e in errs.values()), errs


def check_attention_on(q, k, v, idx, w, S: int, sink: bool, tol: float, **kw: Any) -> tuple[Tensor, list[Tensor]]:
    """The Triton op (``kw``: schedule, atomic_dq, launch) on given inputs against the fp64 twin."""
    o, grads, do = run_attention(q, k, v, idx, w, S, sink, **kw)
    assert_matches_naive(q, k, v, idx, w, S, sink, tol, o, grads, do)
    return o, grads


def check_attention(shape: Shape, dtype: torch.dtype, tol: float, *, empty_frac: float = 0.0, q_scale: float = 1.0,
                    device=DEV, **kw: Any) -> tuple[Tensor, list[Tensor]]:
    """Random inputs of ``shape``: the Triton op against the fp64 twin, forward and backward."""
    q, k, v, idx, w = attention_inputs(shape, dtype, empty_frac=empty_frac, q_scale=q_scale, device=device)
    o, grads = check_attention_on(q, k, v, idx, w, shape.S, shape.sink, tol, **kw)
    assert o.dtype == dtype and o.shape == (shape.B, shape.T, shape.HQ, shape.D)
    return o, grads


def check_gpu_bf16_vs_torch_bf16(shape: Shape, **kw: Any) -> None:
    """On CUDA, bf16: the error against the fp32 reference within 2x that of plain PyTorch in bf16."""
    q, k, v, idx, w = attention_inputs(shape, torch.float32, empty_frac=0.05, device="cuda")
    S, sink = shape.S, shape.sink
    o, grads, do = run_attention(q, k, v, idx, w, S, sink, dtype=torch.bfloat16, **kw)
    ro, rgrads, _ = run_attention(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.float32, do=do)
    bo, bgrads, _ = run_attention(q, k, v, idx, w, S, sink, hsa_attention_naive, dtype=torch.bfloat16, do=do)
    for name, x, r, base in zip("oqkvw", [o, *grads], [ro, *rgrads], [bo, *bgrads]):
        e, eb = rel_err(x, r), rel_err(base, r)
        assert e <= 2 * eb + 1e-6, (name, e, eb)


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


class SpyTorch(PoisonTorch):
    """PoisonTorch that also records the shape and dtype of every fresh buffer the wrapper allocates."""

    def __init__(self) -> None:
        self.allocs: list[tuple[tuple[int, ...], torch.dtype]] = []

    def _rec(self, t: Tensor) -> Tensor:
        self.allocs.append((tuple(t.shape), t.dtype))
        return t

    def empty(self, *args, **kwargs):
        return self._rec(super().empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._rec(super().empty_like(*args, **kwargs))

    def zeros(self, *args, **kwargs):
        return self._rec(torch.zeros(*args, **kwargs))

    def zeros_like(self, *args, **kwargs):
        return self._rec(torch.zeros_like(*args, **kwargs))
