"""HSA kernel benchmark: this project's kernels against the published HSA kernel, fla's NSA and dense
attention, side by side in one run on one CUDA GPU.

Run from a checkout (this file is not installed with the package; ``hsa bench kernels`` loads it from
the checkout it was installed from, with the same flags):

    python bench/bench_kernels.py --out bench/results/h200 --published third_party/hsa_pub/hsa_triton.py
    python bench/bench_kernels.py --sweep --out DIR      # launch settings of the kept schedules

Compares, at bf16, 16 query heads over 1 KV head, D=64, chunk 64, top-8, on the same precomputed
selection:
  * this project's Triton HSA attention (forward, forward+backward; default ``schedule="query"``, and
    the ``--variants`` columns: forced schedules, the atomic-dQ backward) and fused selection;
  * the published HSA Triton kernel (the file ops/hsa_triton.py of RamstorageAI/long-context-modeling), read
    from a git-ignored folder (``--published``; never committed);
  * fla's NSA selected-branch kernel (``ParallelNSAFunction``, what ``parallel_nsa`` runs for the
    selected branch) with the same block indices;
  * dense causal SDPA (flash and cuDNN backends);
  * dense selection (T x C scores + torch.topk) against the fused selection.

Reports median ms (CUDA events), effective TFLOP/s, ratios and peak extra GPU memory; writes
``results.json``, ``results.md`` and ``results.png`` into the output folder (``sweep.json`` with
``--sweep``). A competitor that is not there (published kernel file absent or failing to load, fla
not installed) is left out of the run: its cells read ``-`` and ``results.json`` records
``published_kernel`` / ``fla_nsa`` as false.

API (no argv): :func:`run_benchmark`, :func:`parse_shapes`, :func:`parse_variants`, :func:`cuda_problem`,
the writers :func:`markdown` and :func:`plot`, and :func:`main` (the command line). Heavy imports
(Triton, the kernels, fla, matplotlib) happen inside the functions that need them, so this module
imports on CPU.

Exit codes of the command line: 0 ok, 2 bad arguments, 3 no CUDA GPU (or Triton missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import torch

HQ, H, D, S, K, DR = 16, 1, 64, 64, 8, 1024
SHAPES = [(4096, 4), (16384, 2), (65536, 1), (131072, 1)]
DEFAULT_SHAPES = ",".join(f"{t}x{b}" for t, b in SHAPES)
DEFAULT_OUT = "bench/results/h200"
DEFAULT_PUBLISHED = "third_party/hsa_pub/hsa_triton.py"
#: The forward schedule the "ours" column runs (``hsa_attention_triton``'s default).
DEFAULT_SCHEDULE = "block"
#: Extra columns of this project's kernel, by the key ``--variants`` takes -> (column label, keyword
#: arguments of ``hsa_attention_triton``).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "query": ("query-outer fwd", {"schedule": "query"}),
    "atomic_dq": ("fused bwd, atomic dQ", {"atomic_dq": True}),
}
DEFAULT_VARIANTS = "query"


# ------------------------------------------------------------------------------------------ options
def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """``"4096x4,16384x2"`` -> ``[(4096, 4), (16384, 2)]`` (T x batch).

    Raises:
        ValueError: a malformed item, or a T the inputs cannot be made for (T must be a multiple of
            the chunk size S and give at least top-K chunks); the message names the item.
    """
    shapes = []
    items = [item.strip() for item in spec.split(",")]
    if not any(items):
        raise ValueError(f"no shapes in {spec!r}; expected TxB[,TxB...], e.g. {DEFAULT_SHAPES}")
    for item in items:
        parts = item.lower().split("x")
        try:
            if len(parts) != 2:
                raise ValueError
            T, B = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"{item!r} is not TxB (two integers, e.g. 4096x4)") from None
        if T <= 0 or B <= 0:
            raise ValueError(f"{item!r}: T and B must be positive")
        if T % S or T < K * S:
            raise ValueError(f"{item!r}: T must be a multiple of the chunk size {S} and at least {K * S} "
                             f"(top-{K} chunks)")
        shapes.append((T, B))
    return shapes



def parse_variants(spec: str | None) -> set[str]:
    """``"query,atomic_dq"`` -> ``{"query", "atomic_dq"}``; empty or None -> no extra columns.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    keep = {v.strip().lower() for v in (spec or "").split(",") if v.strip()}
    unknown = sorted(keep - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return keep


def attention_variants(keep: Collection[str]) -> list[tuple[str, dict[str, Any]]]:
    """The extra runs of this project's kernel, in :data:`VARIANTS` order: ``(column label, keyword
    arguments of hsa_attention_triton)`` for each key in ``keep``. Columns read ``ours (<label>)``.

    ``query``: the query-outer forward (the default is the token-block forward);
    ``atomic_dq``: the fused backward adding dQ with fp32 atomics (its saving shows in the fwd+bwd
    memory column).
    """
    return [VARIANTS[key] for key in VARIANTS if key in keep]


def cuda_problem() -> str | None:
    """Why this benchmark cannot run here (no CUDA GPU, or Triton missing), or None when it can."""
    if not torch.cuda.is_available():
        return (f"the kernel benchmark needs a CUDA GPU; torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    if importlib.util.find_spec("triton") is None:
        return "the kernel benchmark needs Triton; install it with: pip install 'hsa-toolkit[triton]'"
    return None


# ------------------------------------------------------------------------------------------- timing
def bench(fn, *, budget_ms: float = 300.0, max_iters: int = 100, min_iters: int = 3) -> float:
    """Median milliseconds of ``fn`` over CUDA-event-timed runs after warm-up (compile excluded)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    n = int(max(min_iters, min(max_iters, budget_ms / max(est, 1e-3))))
    for _ in range(min(3, n)):
        fn()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def peak_mem_mb(fn) -> float:
    """Peak GPU memory allocated during ``fn`` above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def safe(label, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # report and keep going: one failing baseline must not sink the run
        print(f"  [{label}] failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        torch.cuda.empty_cache()
        return None


# ------------------------------------------------------------------------------------------- inputs
#: How the precomputed selection is drawn: ``uniform`` (each token its own K distinct visible chunks,
#: the kernel bar's protocol and the worst case: no two tokens share a K/V tile) or ``block`` (all tokens
#: of a 64-token block share one draw: the best case for K/V reuse, closer to trained models, whose
#: neighbouring tokens mostly pick the same chunks).
#: Or ``recorded:FILE``: the selections a trained model made, recorded by ``bench/record_selections.py``
#: (its first retrieval module, retrieval head 0, the first T tokens).
SELECTIONS = ("uniform", "block")
RECORDED = "recorded:"


def selection_problem(selection: str) -> str | None:
    """Why ``selection`` cannot be used (``None`` when it can)."""
    if selection in SELECTIONS:
        return None
    if selection.startswith(RECORDED):
        path = Path(selection.removeprefix(RECORDED))
        return None if path.is_file() else f"{path}: no such file (write one with bench/record_selections.py)"
    return f"selection must be one of {', '.join(SELECTIONS)} or {RECORDED}FILE, got {selection!r}"


def recorded_selection(path: str | Path, T: int) -> torch.Tensor:
    """``(T, K)`` int32 chunk ids from a ``bench/record_selections.py`` file: its first retrieval module
    (by name), retrieval head 0, the first ``T`` tokens. Empty slots (-1) become chunk 0, as in the
    drawn selections, because the published kernel rejects -1 (every kernel then does K chunks of work
    per token).

    Raises:
        ValueError: the file was recorded with another chunk size or top-k than the benchmark's, or
            holds fewer than ``T`` tokens.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        names = sorted(k for k in f.keys() if k.startswith("indices."))  # noqa: SIM118 (safe_open is not iterable)
        if not names:
            raise ValueError(f"{path}: no indices.* tensor (not a bench/record_selections.py file)")
        idx = f.get_tensor(names[0])
    if int(meta.get("chunk_size", S)) != S or idx.shape[-1] != K:
        raise ValueError(f"{path}: recorded with chunk size {meta.get('chunk_size')} and top-{idx.shape[-1]}; "
                         f"the benchmark uses chunk size {S} and top-{K}")
    if idx.shape[0] < T:
        raise ValueError(f"{path}: holds {idx.shape[0]:,} tokens, fewer than T={T:,}")
    idx = idx[:T, 0].to(torch.int32)
    return torch.where(idx < 0, torch.zeros_like(idx), idx).contiguous()


def make_inputs(T: int, B: int, dtype=torch.bfloat16, seed: int = 0, selection: str = "uniform",
                device: str = "cuda"):
    """``q (B,T,HQ,D), k, v (B,T,H,D), idx (B,T,H,K) int32, w (B,T,H,K)``; see :data:`SELECTIONS`."""
    problem = selection_problem(selection)
    if problem:
        raise ValueError(problem)
    g = torch.Generator(device=device).manual_seed(seed)
    dev = device
    C = T // S
    q = torch.randn(B, T, HQ, D, device=dev, dtype=dtype, generator=g)
    k = torch.randn(B, C * S, H, D, device=dev, dtype=dtype, generator=g)
    v = torch.randn(B, C * S, H, D, device=dev, dtype=dtype, generator=g)
    # Selection: K distinct visible chunks per token (uniform), most recent first. Tokens that see fewer
    # than K chunks repeat chunk 0 so that every kernel does the same K chunks of work per token (the
    # published kernel rejects -1).
    if selection.startswith(RECORDED):  # the same recorded selection for every batch row and KV head
        idx = recorded_selection(selection.removeprefix(RECORDED), T).to(dev)
        idx = idx[None, :, None, :].expand(B, T, H, K).contiguous()
        w = torch.rand(B, T, H, K, device=dev, generator=g) / K
        return q, k, v, idx, w
    pos = torch.arange(T, device=dev)
    nvis = (pos // S).clamp(min=1)
    if T * C * B > 2**31:
        raise ValueError("shape too large for this selection generator")
    if selection == "block":  # one draw per 64-token block (nvis is constant inside a block)
        r = torch.rand(B, C, H, C, device=dev, generator=g)[:, pos // S]
    else:
        r = torch.rand(B, T, H, C, device=dev, generator=g)
    r = r.masked_fill(torch.arange(C, device=dev)[None, None, None, :] >= nvis[None, :, None, None], -1.0)
    top = r.topk(K, dim=-1)
    idx = torch.where(top.values >= 0, top.indices, torch.zeros_like(top.indices))
    idx = idx.sort(dim=-1, descending=True).values.to(torch.int32).contiguous()
    del r, top
    w = torch.rand(B, T, H, K, device=dev, generator=g) / K
    return q, k, v, idx, w


def attn_flops(B: int, T: int) -> float:
    """Selected-attention work of the forward: QK^T and PV over K chunks of S keys, per token and head."""
    return 4.0 * B * T * HQ * K * S * D


def dense_flops(B: int, T: int) -> float:
    return 4.0 * B * HQ * D * T * T / 2


# ------------------------------------------------------------------------------------- contenders
def ours(q, k, v, idx, w, **kwargs):
    from hsa_kernels.hsa_attention import hsa_attention_triton

    return hsa_attention_triton(q, k, v, idx, w, chunk_size=S, **kwargs)


def _load_file(name: str, path: str | Path):
    """The Python module in ``path``, executed under ``name`` (files outside any installed package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_published(path: str | Path | None):
    """The published kernel module from ``path``, or None when the file is absent or fails to load."""
    if not path or not Path(path).exists():
        return None
    try:
        mod = _load_file("hsa_published", path)
    except Exception as exc:  # a broken copy is reported and left out, like an absent one
        print(f"published HSA kernel unavailable: {type(exc).__name__}: {str(exc)[:200]}")
        return None
    return mod


def load_nsa():
    try:
        from fla.ops.nsa.parallel import ParallelNSAFunction
    except Exception as exc:
        print(f"fla NSA unavailable: {exc}")
        return None
    return ParallelNSAFunction


def run_fwd_bwd(f, inputs, grads_of, do):
    def step():
        for t in grads_of:
            t.grad = None
        o = f(*inputs)
        o.backward(do)

    return step


def time_attention(name, f, inputs, grads_of, B, T, do, with_bwd=True):
    row = {"name": name}
    with torch.no_grad():
        row["fwd_ms"] = safe(name + " fwd", bench, lambda: f(*inputs))
        row["fwd_mem_mb"] = safe(name + " fwd mem", peak_mem_mb, lambda: f(*inputs))
    if with_bwd:
        step = run_fwd_bwd(f, inputs, grads_of, do)
        row["fwdbwd_ms"] = safe(name + " fwd+bwd", bench, step)
        row["fwdbwd_mem_mb"] = safe(name + " fwd+bwd mem", peak_mem_mb, step)
        for t in grads_of:
            t.grad = None
    return row


def bench_shape(T, B, published, nsa, variants: Collection[str] = (), selection: str = "uniform"):
    """One shape: every attention contender (``variants``: keys of :data:`VARIANTS`), then selection."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, idx, w = make_inputs(T, B, selection=selection)
    do = torch.randn_like(q)
    rows = []
    big = T >= 131072
    qg, kg, vg, wg = (x.detach().clone().requires_grad_() for x in (q, k, v, w))
    rows.append(time_attention("ours", ours, (qg, kg, vg, idx, wg), (qg, kg, vg, wg), B, T, do))
    for label, kwargs in attention_variants(set(variants)):
        rows.append(time_attention(f"ours ({label})", functools.partial(ours, **kwargs), (qg, kg, vg, idx, wg),
                                   (qg, kg, vg, wg), B, T, do))
    if published is not None:
        scale = D**-0.5
        idx_l = idx.long().contiguous()

        def pub(q_, k_, v_, w_):
            return published.HSA(q_, k_, v_, w_, idx_l, 0.0, S, scale)

        rows.append(time_attention("published HSA", pub, (qg, kg, vg, wg), (qg, kg, vg, wg), B, T, do,
                                   with_bwd=not big))
    if nsa is not None:
        bi = idx.long().contiguous()

        def nsa_f(q_, k_, v_):
            return nsa.apply(q_, k_, v_, bi, K, S, D**-0.5, None)

        rows.append(time_attention("fla NSA selected", nsa_f, (qg, kg, vg), (qg, kg, vg), B, T, do,
                                   with_bwd=not big))
    # Dense causal attention: (B, HQ, T, D); the single KV head expanded outside the timed region.
    qd = q.transpose(1, 2).contiguous().requires_grad_()
    kd = k.transpose(1, 2).expand(B, HQ, T, D).contiguous().requires_grad_()
    vd = v.transpose(1, 2).expand(B, HQ, T, D).contiguous().requires_grad_()
    dod = do.transpose(1, 2).contiguous()
    for label, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):

        def dense(q_, k_, v_, backend=backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, is_causal=True)

        r = time_attention(label, dense, (qd, kd, vd), (qd, kd, vd), B, T, dod)
        r["dense"] = True
        rows.append(r)
    del qd, kd, vd, dod
    for r in rows:
        fl = dense_flops(B, T) if r.get("dense") else attn_flops(B, T)
        if r.get("fwd_ms"):
            r["fwd_tflops"] = fl / r["fwd_ms"] / 1e9
        if r.get("fwdbwd_ms"):
            r["fwdbwd_tflops"] = 3.5 * fl / r["fwdbwd_ms"] / 1e9  # bwd counted as 2.5x fwd
    sel = bench_selection(T, B)
    return {"T": T, "B": B, "attention": rows, "selection": sel}


def bench_selection(T, B):
    from hsa_kernels.hsa_select import hsa_select_triton

    C = T // S
    g = torch.Generator(device="cuda").manual_seed(1)
    qr = torch.randn(B, T, 1, DR, device="cuda", dtype=torch.bfloat16, generator=g)
    lm = torch.randn(B, C, 1, DR, device="cuda", dtype=torch.bfloat16, generator=g)

    def fused():
        return hsa_select_triton(qr, lm, topk=K, chunk_size=S)

    vis = (torch.arange(C, device="cuda")[None, :] + 1) * S <= torch.arange(T, device="cuda")[:, None]

    def dense():
        s = torch.einsum("bthd,bchd->bthc", qr, lm)  # (B,T,1,C) bf16 scores, like the published code
        s = s.masked_fill(~vis[None, :, None, :], float("-inf"))
        return torch.topk(s, K, dim=-1)

    out = {}
    with torch.no_grad():
        out["fused_ms"] = safe("fused selection", bench, fused)
        out["fused_mem_mb"] = safe("fused selection mem", peak_mem_mb, fused)
        out["dense_ms"] = safe("dense selection", bench, dense)
        out["dense_mem_mb"] = safe("dense selection mem", peak_mem_mb, dense)
        # agreement of the fused choice with the dense one (same bf16 inputs; ties may differ)
        try:
            i_f, _ = fused()
            from hsa_kernels.hsa_select import hsa_select_naive

            n = min(T, 8192)
            i_r, _ = hsa_select_naive(qr[:, -n:], lm, topk=K, chunk_size=S, q_offset=T - n)
            out["idx_agree_last8k"] = (i_f[:, -n:] == i_r).float().mean().item()
        except Exception as exc:
            print("selection agreement check failed:", exc)
    return out


# ------------------------------------------------------------------------------------- correctness
def check_correctness(T=8192, B=1):
    """bf16 kernel error vs fp32 reference, next to plain PyTorch in bf16 (the kernel bar's error limit)."""
    from hsa_kernels.hsa_attention import hsa_attention_naive

    q, k, v, idx, w = make_inputs(T, B, dtype=torch.float32, seed=3)
    idx = idx.masked_fill(torch.rand(idx.shape, device="cuda") < 0.05, -1)
    do = torch.randn_like(q)

    def run(f, dtype):
        xs = [x.to(dtype).detach().requires_grad_() for x in (q, k, v, w)]
        o = f(xs[0], xs[1], xs[2], idx, xs[3], chunk_size=S)
        o.backward(do.to(o.dtype))
        return [o.float(), *[x.grad.float() for x in xs]]

    from hsa_kernels.hsa_attention import hsa_attention_triton

    ref = run(hsa_attention_naive, torch.float32)
    mine = run(hsa_attention_triton, torch.bfloat16)
    base = run(hsa_attention_naive, torch.bfloat16)
    res = {}
    for n, a, b, r in zip(["o", "dq", "dk", "dv", "dw"], mine, base, ref):
        ea = ((a - r).norm() / r.norm()).item()
        eb = ((b - r).norm() / r.norm()).item()
        res[n] = {"triton_bf16": ea, "torch_bf16": eb, "ratio": ea / eb if eb else math.inf}
    return res


# ------------------------------------------------------------------------------------------- sweep
def _sweep_rows(label: str, settings: Iterable[dict[str, Any]], time_one) -> list[dict[str, Any]]:
    """``time_one(**setting)`` for each setting, printed and returned as rows ``setting + {"ms": ...}``."""
    rows = []
    for setting in settings:
        ms = safe(label, bench, lambda setting=setting: time_one(**setting))
        rows.append({**setting, "ms": ms})
        print(f"{label} {setting}: {fmt(ms)} ms", flush=True)
    return rows


def _sweep_forward(T: int, B: int, selection: str) -> list[dict[str, Any]]:
    """Forward schedules and launch settings on one selection (see :data:`SELECTIONS`, or ``recorded:FILE``)."""
    from hsa_kernels.hsa_attention import AttentionLaunch
    from hsa_kernels.hsa_attention.forward import hsa_attention_fwd

    q, k, v, idx, w = make_inputs(T, B, selection=selection)

    def fwd(schedule="query", **launch):
        return hsa_attention_fwd(q, k, v, idx, w, S, D**-0.5, False, schedule=schedule, store_lse=False,
                                 launch=AttentionLaunch(**launch))

    grid = [{"schedule": s} for s in ("query", "block")]
    grid += [{"fwd_warps": nw, "fwd_stages": ns} for nw in (1, 2, 4) for ns in (2, 3, 4)]
    grid += [{"schedule": "block", "block_rows": r, "block_share_max": m, "block_warps": nw, "block_stages": ns}
             for r, m, nw, ns in ((64, 8, 4, 3), (64, 24, 4, 3), (64, 16, 8, 3), (64, 16, 4, 2), (32, 8, 2, 3),
                                  (128, 32, 8, 3))]
    # (16-token blocks, block_rows=256, lost by 55-60% on the demo's selections: bench/results/h200/README.md)
    return _sweep_rows(f"fwd {selection}", grid, fwd)


def _sweep_backward(T: int, B: int) -> list[dict[str, Any]]:
    """Fused-backward launch settings (inverse index included), and the atomic-dQ variant."""
    from hsa_kernels.hsa_attention import AttentionLaunch
    from hsa_kernels.hsa_attention.backward import hsa_attention_bwd
    from hsa_kernels.hsa_attention.forward import hsa_attention_fwd

    q, k, v, idx, w = make_inputs(T, B)
    do = torch.randn_like(q)
    _, lse = hsa_attention_fwd(q, k, v, idx, w, S, D**-0.5, False, schedule="query")

    def bwd(atomic_dq=False, **launch):
        return hsa_attention_bwd(do, q, k, v, idx, w, lse, S, D**-0.5, atomic_dq=atomic_dq,
                                 launch=AttentionLaunch(**launch))

    grid = [{"bwd_rows": r, "bwd_warps": nw, "bwd_stages": ns} for r in (32, 64, 128) for nw in (4, 8)
            for ns in (1, 2)]
    grid += [{"bwd_seg": seg} for seg in (256, 512, 4096)] + [{"atomic_dq": True}]
    return _sweep_rows("bwd", grid, bwd)


def _sweep_select(T: int) -> list[dict[str, Any]]:
    """Tile sizes and launch settings of the fused selection (d_r = DR, batch 1)."""
    from hsa_kernels.hsa_select import SelectLaunch, hsa_select_triton

    qr = torch.randn(1, T, 1, DR, device="cuda", dtype=torch.bfloat16)
    lm = torch.randn(1, T // S, 1, DR, device="cuda", dtype=torch.bfloat16)

    def select(**launch):
        return hsa_select_triton(qr, lm, topk=K, chunk_size=S, launch=SelectLaunch(**launch))

    grid = [{"block_t": bt, "block_c": bc, "block_d": bd, "warps": nw, "stages": ns}
            for bt, bc, bd, nw, ns in ((128, 128, 64, 8, 3), (64, 128, 64, 8, 3), (128, 64, 64, 8, 3),
                                       (128, 128, 32, 8, 4), (128, 128, 64, 4, 3), (64, 64, 64, 4, 2))]
    return _sweep_rows("select", grid, select)


def sweep_select_long(segment: int = 16384, dr: int = 256, contexts: Iterable[int] = (1 << 24, 1 << 26),
                      kinds: Iterable[str] = ("random",), heads: int = 1,
                      grid: Iterable[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The fused selection deep into a long prefill: one segment of ``segment`` tokens at the end of each
    context (``q_offset``: every token sees ``context / S`` landmarks), ``heads`` retrieval heads of ``dr``
    each, timed for each ``SelectLaunch`` setting of ``grid``. Each setting's selection is compared with
    the first setting's: a row's ``differ`` counts the (token, head, slot) indices that are not the same.

    ``kinds``: ``random`` queries and landmarks (scores without structure), or ``periodic`` landmarks (997
    distinct ones repeated along the memory, as periodic filler gives a trained model: many equal scores).
    ``grid`` default: per-chunk merges (``group=1``) and groups of 16, each with and without
    ``skip_merges``; the grouped ones with the query tile reloaded per tile (``resident_d=16``) and
    resident (the default up to d_r=128).
        python3 -c "import sys; sys.path.insert(0, 'bench'); import bench_kernels as b; \
            b.sweep_select_long(contexts=(1 << 20, 1 << 22, 1 << 24, 1 << 26), kinds=('random', 'periodic'), \
            dr=128, heads=2)"
    """
    from hsa_kernels.hsa_select import SelectLaunch, hsa_select_triton

    grid = list(grid) if grid is not None else (
        [{"group": 1, "skip_merges": skip} for skip in (False, True)]
        + [{"group": 16, "skip_merges": skip, **resident}
           for resident in ({"resident_d": 16}, {}) for skip in (False, True)])
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        for context in contexts:
            C = context // S
            qr = torch.randn(1, segment, heads, dr, device="cuda", dtype=torch.bfloat16)
            if kind == "periodic":
                distinct = torch.randn(1, 997, heads, dr, device="cuda", dtype=torch.bfloat16)
                lm = distinct[:, torch.arange(C, device="cuda") % 997]
            else:
                lm = torch.randn(1, C, heads, dr, device="cuda", dtype=torch.bfloat16)

            def select(_qr=qr, _lm=lm, _offset=context - segment, **launch):
                return hsa_select_triton(_qr, _lm, topk=K, chunk_size=S, q_offset=_offset,
                                         launch=SelectLaunch(**launch))

            label = f"select {segment} tokens at {context >> 20}M, {kind}, {heads}x{dr}"
            first = None
            for row in _sweep_rows(label, grid, select):
                setting = {k: v for k, v in row.items() if k != "ms"}
                idx = safe(label, lambda setting=setting: select(**setting)[0])
                if isinstance(idx, torch.Tensor):
                    first = idx if first is None else first
                    row["differ"] = int((idx != first).sum())
                    print(f"  {setting}: {row['differ']} indices differ from {grid[0]}", flush=True)
                rows.append({"context": context, "kind": kind, **row})
            del qr, lm, first
            torch.cuda.empty_cache()
    return rows


def run_sweep(T: int = 65536, B: int = 1) -> dict[str, Any]:
    """Launch settings of the kept schedules at T (selection at 2T): the forward schedules and settings on
    uniform and block-shared selections, the fused backward (atomic dQ too), the fused selection. Each
    row times one setting (fields of ``AttentionLaunch`` / ``SelectLaunch``; the rest at their defaults)."""
    from hsa_kernels.hsa_attention import AttentionLaunch
    from hsa_kernels.hsa_select import SelectLaunch

    out: dict[str, Any] = {"T": T, "B": B, "defaults": dataclasses.asdict(AttentionLaunch()),
                           "select_defaults": dataclasses.asdict(SelectLaunch())}
    with torch.no_grad():
        for selection in SELECTIONS:
            out[f"fwd {selection}"] = _sweep_forward(T, B, selection)
            torch.cuda.empty_cache()
        out["bwd (index included)"] = _sweep_backward(T, B)
        torch.cuda.empty_cache()
        out[f"select T={2 * T}"] = _sweep_select(2 * T)
        torch.cuda.empty_cache()
        out["select long"] = sweep_select_long()
    return out


# ------------------------------------------------------------------------------------------ report
def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def variant_names(results) -> list[str]:
    """Names of the extra columns of ours (``ours (chunk-outer fwd)``, ...), from the first shape's rows."""
    sh = results["shapes"][0] if results["shapes"] else {"attention": []}
    return [r["name"] for r in sh["attention"] if r["name"].startswith("ours (")]


_SELECTION_TEXT = {"uniform": "uniform over visible chunks",
                   "block": "one uniform draw per 64-token block, shared by its tokens"}


def _selection_text(selection: str) -> str:
    if selection.startswith(RECORDED):
        return f"recorded from a trained model: {selection.removeprefix(RECORDED)}"
    return _SELECTION_TEXT[selection]


def _fwd_bwd_table(results, title: str, key: str) -> list[str]:
    """A ``fwd_<key> / fwdbwd_<key>`` table (integers) over the shapes, for the fixed contender columns."""
    names = ("ours", "published HSA", "fla NSA selected", "SDPA flash", "SDPA cuDNN")
    lines = ["", f"## {title}", "", "| T (batch) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for sh in results["shapes"]:
        by = {r["name"]: r for r in sh["attention"]}
        cells = [f"{fmt(by.get(n, {}).get(f'fwd_{key}'), 0)} / {fmt(by.get(n, {}).get(f'fwdbwd_{key}'), 0)}"
                 for n in names]
        lines.append(f"| {sh['T'] // 1024}K ({sh['B']}) | " + " | ".join(cells) + " |")
    return lines


def markdown(results) -> str:
    """``results.md``: the tables of a :func:`run_benchmark` results dict."""
    lines = [f"# HSA kernels on {results['device']} ({results['date']})", "",
             f"bf16, HQ={HQ} over H={H} KV head, D={D}, S={S}, top-{K}; selection precomputed "
             f"({_selection_text(results.get('selection', 'uniform'))}); median ms over CUDA events; "
             f"command: `{results['command']}`", ""]
    # "schedule" since the schedules became arguments; older results recorded CONFIG's "fwd_mode".
    default = results.get("schedule") or f"{results.get('fwd_mode', 'query')}-outer"
    lines += ["## Forward / forward+backward (ms)", "",
              f"| T (batch) | ours (default: {default} fwd) | "
              + " | ".join(variant_names(results)) + " | published HSA |"
              " fla NSA selected | SDPA flash | SDPA cuDNN | ours vs published | ours vs NSA |",
              "|---|---|" + "---|" * len(variant_names(results)) + "---|---|---|---|---|---|"]
    for sh in results["shapes"]:
        by = {r["name"]: r for r in sh["attention"]}

        def cell(n, by=by):
            r = by.get(n, {})
            return f"{fmt(r.get('fwd_ms'))} / {fmt(r.get('fwdbwd_ms'), 2)}"

        def ratio(n, key, by=by):
            a, b = by.get("ours", {}).get(key), by.get(n, {}).get(key)
            return f"{b / a:.2f}x" if a and b else "-"

        lines.append(
            f"| {sh['T'] // 1024}K ({sh['B']}) | {cell('ours')} | "
            + "".join(f"{cell(n)} | " for n in variant_names(results)) + f"{cell('published HSA')} | "
            f"{cell('fla NSA selected')} | {cell('SDPA flash')} | {cell('SDPA cuDNN')} | "
            f"{ratio('published HSA', 'fwd_ms')} / {ratio('published HSA', 'fwdbwd_ms')} | "
            f"{ratio('fla NSA selected', 'fwd_ms')} / {ratio('fla NSA selected', 'fwdbwd_ms')} |")
    lines += _fwd_bwd_table(results, "Effective TFLOP/s (fwd / fwd+bwd; selected-attention work for sparse, "
                            "causal for dense)", "tflops")
    lines += _fwd_bwd_table(results, "Peak extra GPU memory, MiB (fwd / fwd+bwd)", "mem_mb")
    lines += ["", f"## Selection (d_r={DR}, top-{K}, stick-breaking weights in the fused kernel)", "",
              "| T (batch) | fused ms | dense scores + topk ms | speed-up | fused MiB | dense MiB | ids equal (last 8K)"
              " |", "|---|---|---|---|---|---|---|"]
    for sh in results["shapes"]:
        s = sh["selection"]
        sp = f"{s['dense_ms'] / s['fused_ms']:.2f}x" if s.get("fused_ms") and s.get("dense_ms") else "-"
        lines.append(f"| {sh['T'] // 1024}K ({sh['B']}) | {fmt(s.get('fused_ms'))} | {fmt(s.get('dense_ms'))} | {sp}"
                     f" | {fmt(s.get('fused_mem_mb'), 0)} | {fmt(s.get('dense_mem_mb'), 0)} |"
                     f" {fmt(s.get('idx_agree_last8k'), 4)} |")
    if results.get("correctness"):
        lines += ["", "## Error vs fp32 reference (T=8192, 5% empty slots; relative L2)", "",
                  "| tensor | Triton bf16 | PyTorch bf16 | ratio |", "|---|---|---|---|"]
        for n, e in results["correctness"].items():
            lines.append(f"| {n} | {e['triton_bf16']:.2e} | {e['torch_bf16']:.2e} | {e['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> None:
    """``results.png``: forward, forward+backward and selection times per shape (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["ours", "published HSA", "fla NSA selected", "SDPA cuDNN"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    xs = [f"{sh['T'] // 1024}K" for sh in results["shapes"]]
    for ax, key, title in ((axes[0], "fwd_ms", "forward"), (axes[1], "fwdbwd_ms", "forward+backward")):
        for n in names:
            ys = [next((r.get(key) for r in sh["attention"] if r["name"] == n), None) for sh in results["shapes"]]
            ax.plot(xs, [y if y else float("nan") for y in ys], marker="o", label=n)
        ax.set_yscale("log")
        ax.set_title(f"HSA attention {title} (ms, log)")
        ax.set_xlabel("T (batch 4,2,1,1)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax = axes[2]
    for key, lab in (("fused_ms", "fused selection (ours)"), ("dense_ms", "dense scores + topk")):
        ys = [sh["selection"].get(key) for sh in results["shapes"]]
        ax.plot(xs, [y if y else float("nan") for y in ys], marker="o", label=lab)
    ax.set_yscale("log")
    ax.set_title(f"selection d_r={DR} (ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_benchmark(
    shapes: Iterable[tuple[int, int]] = SHAPES,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    published: str | Path | None = DEFAULT_PUBLISHED,
    variants: Collection[str] | str = DEFAULT_VARIANTS,
    correctness: bool = True,
    sweep: bool = False,
    command: str | None = None,
    selection: str = "uniform",
) -> dict:
    """Run the benchmark on the current CUDA device and write its files into ``out_dir`` (created).

    With ``sweep``: only the launch-setting sweep (:func:`run_sweep`), written to ``sweep.json`` and
    returned; the other options are ignored. Otherwise: the correctness check (unless
    ``correctness=False``), the table over ``shapes`` (``results.json`` rewritten after every shape),
    ``results.md``, ``results.png``; returns the results dict that :func:`markdown` formats. ``command``
    is recorded in the results (default: ``python`` + ``sys.argv``). ``selection``: how the table's selections are drawn
    (:data:`SELECTIONS`; the correctness check always uses ``uniform``). Progress goes to
    stdout. The caller checks :func:`cuda_problem` first.
    """
    problem = selection_problem(selection)
    if problem:
        raise ValueError(problem)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if sweep:
        res = run_sweep()
        (out / "sweep.json").write_text(json.dumps(res, indent=1))
        return res
    variants = parse_variants(variants if isinstance(variants, str) else ",".join(variants))
    published_mod = load_published(published)
    nsa = load_nsa()
    results = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": command if command is not None else " ".join(["python", *sys.argv]),
               "torch": torch.__version__,
               "triton": __import__("triton").__version__, "python": platform.python_version(),
               "published_kernel": bool(published_mod), "fla_nsa": bool(nsa), "shapes": [],
               "schedule": DEFAULT_SCHEDULE, "selection": selection}
    if correctness:
        results["correctness"] = safe("correctness", check_correctness)
        print(json.dumps(results["correctness"], indent=1), flush=True)
    for T, B in shapes:
        print(f"== T={T} B={B}", flush=True)
        sh = bench_shape(T, B, published_mod, nsa, variants, selection)
        results["shapes"].append(sh)
        for r in sh["attention"]:
            print(f"  {r['name']:18s} fwd {fmt(r.get('fwd_ms'))} ms  fwd+bwd {fmt(r.get('fwdbwd_ms'))} ms  "
                  f"mem {fmt(r.get('fwd_mem_mb'), 0)}/{fmt(r.get('fwdbwd_mem_mb'), 0)} MiB", flush=True)
        print(f"  selection {sh['selection']}", flush=True)
        torch.cuda.empty_cache()
        (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    safe("plot", plot, results, out / "results.png")
    return results


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """The command line (same flags and files as ``hsa bench kernels``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for results.json/.md/.png (sweep.json with --sweep)")
    p.add_argument("--published", default=DEFAULT_PUBLISHED, help="the published HSA Triton kernel file")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="TxB,TxB,... (T a multiple of 64, >= 512)")
    p.add_argument("--sweep", action="store_true", help="only sweep launch settings (T=64K) into sweep.json")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"extra columns of ours, from: {', '.join(VARIANTS)}; '' for none")
    p.add_argument("--no-correctness", action="store_true", help="skip the bf16-vs-fp32 error check")
    p.add_argument("--selection", default="uniform",
                   help="uniform (each token its own selection), block (shared per 64-token block) or "
                        "recorded:FILE (a trained model's, from bench/record_selections.py)")
    args = p.parse_args(argv)
    if problem := selection_problem(args.selection):
        p.error(f"argument --selection: {problem}")
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        p.error(f"argument --shapes: {exc}")
    try:
        variants = parse_variants(args.variants)
    except ValueError as exc:
        p.error(f"argument --variants: {exc}")
    problem = cuda_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    results = run_benchmark(shapes, args.out, published=args.published, variants=variants,
                            correctness=not args.no_correctness, sweep=args.sweep, selection=args.selection)
    if not args.sweep:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
