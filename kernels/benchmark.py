"""HSA kernel benchmark (issue 3's table), side by side in one run on one GPU.

Behind ``hsa bench kernels`` and ``bench/bench_kernels.py`` (a thin wrapper with the same flags).

Compares, at bf16, 16 query heads over 1 KV head, D=64, chunk 64, top-8, on the same precomputed
selection:
  * this project's Triton HSA attention (forward, forward+backward) and fused selection;
  * the published HSA Triton kernel (``ops/hsa_triton.py`` of RamstorageAI/long-context-modeling), read
    from a git-ignored folder (``--published``; never committed);
  * fla's NSA selected-branch kernel (``ParallelNSAFunction``, what ``parallel_nsa`` runs for the
    selected branch) with the same block indices;
  * dense causal SDPA (flash and cuDNN backends);
  * dense selection (T x C scores + torch.topk) against the fused selection.

Reports median ms (CUDA events), effective TFLOP/s, ratios and peak extra GPU memory; writes
``results.json``, ``results.md`` and ``results.png`` into the output folder (``sweep.json`` with
``sweep=True``). A competitor that is not there (published kernel file absent or failing to load, fla
not installed) is left out of the run: its cells read ``-`` and ``results.json`` records
``published_kernel`` / ``fla_nsa`` as false.

Public API (no argv): :func:`run_benchmark`, :func:`parse_shapes`, :func:`parse_variants`,
:func:`cuda_problem`, and the writers :func:`markdown` and :func:`plot`. Heavy imports (Triton, our
kernels, fla, matplotlib) happen inside the functions that need them, so this module imports on CPU.

Usage (on the GPU machine):
    hsa bench kernels --out bench/results/h200 --published third_party/hsa_pub/hsa_triton.py
    hsa bench kernels --sweep                      # launch-setting sweep of this project's kernels
    python bench/bench_kernels.py ...              # same flags, same files
"""

from __future__ import annotations

import importlib.util
import json
import math
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
#: Extra columns of this project's kernel, by the key ``--variants`` takes -> column label.
VARIANTS = {"chunk": "chunk-outer fwd", "tma": "TMA fwd", "block": "token-block fwd",
            "index": "other inverse index",
            "atomic": "chunk-outer atomic fwd", "atomic_dq": "fused bwd, atomic dQ"}
DEFAULT_VARIANTS = "chunk,tma,index"


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
    """``"chunk,tma"`` -> ``{"chunk", "tma"}``; empty or None -> no extra columns.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    keep = {v.strip().lower() for v in (spec or "").split(",") if v.strip()}
    unknown = sorted(keep - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return keep


def attention_variants(base: dict[str, Any], keep: Collection[str]) -> list[tuple[str, dict[str, Any]]]:
    """The extra runs of this project's kernel: ``(column label, CONFIG change)`` for each key in ``keep``.

    ``chunk``: the other forward schedule than the default (``base["fwd_mode"]``); ``tma``: the
    query-outer forward with ``use_tma`` flipped; ``block``: the token-block forward (``"block"``; or
    "query" when that is the default); ``index``: the other inverse-index implementation
    (``index_impl`` torch <-> triton; it feeds the backward); ``atomic``: the chunk-outer forward with
    fp32 atomic accumulation over a token-blocked index (``fwd_mode="chunk_atomic"``; opt-in, not in
    :data:`DEFAULT_VARIANTS`); ``atomic_dq``: the fused backward adding dQ with fp32 atomics into
    (B,T,HQ,D) instead of the per-pair buffer + reduce (``bwd_mode="fused_atomic"``; opt-in; its saving
    shows in the fwd+bwd memory column). Columns read ``ours (<label>)``.
    """
    other_index = "triton" if base.get("index_impl", "torch") == "torch" else "torch"
    changes = {"chunk": {"fwd_mode": "chunk" if base["fwd_mode"] == "query" else "query"},
               "tma": {"fwd_mode": "query", "use_tma": not base["use_tma"]},
               "block": {"fwd_mode": "block" if base["fwd_mode"] != "block" else "query"},
               "index": {"index_impl": other_index},
               "atomic": {"fwd_mode": "chunk_atomic"},
               "atomic_dq": {"bwd_mode": "fused_atomic"}}
    return [(VARIANTS[key], changes[key]) for key in VARIANTS if key in keep]


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
#: the issue's protocol and the worst case: no two tokens share a K/V tile) or ``block`` (all tokens
#: of a 64-token block share one draw: the best case for K/V reuse, closer to trained models, whose
#: neighbouring tokens mostly pick the same chunks).
SELECTIONS = ("uniform", "block")


def make_inputs(T: int, B: int, dtype=torch.bfloat16, seed: int = 0, selection: str = "uniform",
                device: str = "cuda"):
    """``q (B,T,HQ,D), k, v (B,T,H,D), idx (B,T,H,K) int32, w (B,T,H,K)``; see :data:`SELECTIONS`."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    g = torch.Generator(device=device).manual_seed(seed)
    dev = device
    C = T // S
    q = torch.randn(B, T, HQ, D, device=dev, dtype=dtype, generator=g)
    k = torch.randn(B, C * S, H, D, device=dev, dtype=dtype, generator=g)
    v = torch.randn(B, C * S, H, D, device=dev, dtype=dtype, generator=g)
    # Selection: K distinct visible chunks per token (uniform), most recent first. Tokens that see fewer
    # than K chunks repeat chunk 0 so that every kernel does the same K chunks of work per token (the
    # published kernel rejects -1).
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
def ours(q, k, v, idx, w):
    from hsa_kernels.hsa_attention import hsa_attention_triton

    return hsa_attention_triton(q, k, v, idx, w, chunk_size=S)


def load_published(path: str | Path | None):
    """The published kernel module from ``path``, or None when the file is absent or fails to load."""
    if not path or not Path(path).exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location("hsa_published", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
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
    import hsa_kernels.hsa_attention.function as fn

    base = dict(fn.CONFIG)
    for label, change in attention_variants(base, set(variants)):
        fn.CONFIG.update(change)
        try:
            rows.append(time_attention(f"ours ({label})", ours, (qg, kg, vg, idx, wg), (qg, kg, vg, wg), B, T, do))
        finally:
            fn.CONFIG.update(base)
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
            from hsa_core.ops.reference import hsa_select_torch

            n = min(T, 8192)
            i_r, _ = hsa_select_torch(qr[:, -n:], lm, topk=K, chunk_size=S, q_offset=T - n)
            out["idx_agree_last8k"] = (i_f[:, -n:] == i_r).float().mean().item()
        except Exception as exc:
            print("selection agreement check failed:", exc)
    return out


# ------------------------------------------------------------------------------------- correctness
def check_correctness(T=8192, B=1):
    """bf16 kernel error vs fp32 reference, next to plain PyTorch in bf16 (the issue's error bar)."""
    from hsa_core.ops.reference import hsa_attention_torch

    q, k, v, idx, w = make_inputs(T, B, dtype=torch.float32, seed=3)
    idx = idx.masked_fill(torch.rand(idx.shape, device="cuda") < 0.05, -1)
    do = torch.randn_like(q)

    def run(f, dtype):
        xs = [x.to(dtype).detach().requires_grad_() for x in (q, k, v, w)]
        o = f(xs[0], xs[1], xs[2], idx, xs[3], chunk_size=S)
        o.backward(do.to(o.dtype))
        return [o.float(), *[x.grad.float() for x in xs]]

    from hsa_kernels.hsa_attention import hsa_attention_triton

    ref = run(hsa_attention_torch, torch.float32)
    mine = run(hsa_attention_triton, torch.bfloat16)
    base = run(hsa_attention_torch, torch.bfloat16)
    res = {}
    for n, a, b, r in zip(["o", "dq", "dk", "dv", "dw"], mine, base, ref):
        ea = ((a - r).norm() / r.norm()).item()
        eb = ((b - r).norm() / r.norm()).item()
        res[n] = {"triton_bf16": ea, "torch_bf16": eb, "ratio": ea / eb if eb else math.inf}
    return res


# ------------------------------------------------------------------------------------------- sweep
def run_sweep(T=65536, B=1):
    """Launch settings and schedules of this project's kernels at T=64K (selection at 128K), one table each."""
    import hsa_kernels.hsa_attention.function as fn
    import hsa_kernels.hsa_select.function as sf

    q, k, v, idx, w = make_inputs(T, B)
    do = torch.randn_like(q)
    base = dict(fn.CONFIG)
    out = {"fwd": [], "bwd": [], "select": []}
    with torch.no_grad():
        for nw in (1, 2, 4, 8):
            for ns in (1, 2, 3):
                fn.CONFIG.update(base, fwd_warps=nw, fwd_stages=ns)
                ms = safe(f"fwd w{nw} s{ns}", bench, lambda: ours(q, k, v, idx, w))
                out["fwd"].append({"warps": nw, "stages": ns, "ms": ms})
                print(f"fwd warps={nw} stages={ns}: {fmt(ms)}", flush=True)
        for rows, nw, ns, pdt in [(64, 4, 2, "input"), (32, 4, 2, "input"), (128, 8, 2, "input"),
                                  (64, 8, 2, "input"), (64, 4, 3, "input"), (64, 4, 1, "input"),
                                  (64, 4, 2, "fp32")]:
            fn.CONFIG.update(base, fwd_mode="chunk", fwd_rows=rows, fwd_chunk_warps=nw, fwd_chunk_stages=ns,
                             pair_dtype=pdt)
            ms = safe("fwd chunk", bench, lambda: ours(q, k, v, idx, w))
            out["fwd"].append({"mode": "chunk", "rows": rows, "warps": nw, "stages": ns, "pair_dtype": pdt,
                               "ms_with_index": ms})
            print(f"fwd chunk-outer rows={rows} warps={nw} stages={ns} pair={pdt}: {fmt(ms)} (incl. index)",
                  flush=True)
        fn.CONFIG.update(base)
        _, lse = fn.hsa_attention_fwd(q, k, v, idx, w, S, D**-0.5, False)
        inv = fn.build_inverse_index(idx, T // S, base["bwd_kv_seg"])
        ms = safe("inverse index", bench, lambda: fn.build_inverse_index(idx, T // S, base["bwd_kv_seg"]))
        out["inverse_index_ms"] = ms
        print(f"inverse index build: {fmt(ms)}", flush=True)
        variants = [("split", 64, 4, 2, 256, 4, 2)]
        for rows in (32, 64, 128):
            for nw in (4, 8):
                for ns in (1, 2):
                    variants.append(("fused", rows, nw, ns, 256, 4, 2))
        variants += [("fused", 64, 4, 2, 1024, 4, 2), ("fused", 64, 4, 2, 128, 4, 2),
                     ("split", 64, 4, 2, 256, 2, 2), ("split", 64, 4, 2, 256, 4, 3),
                     ("fused_atomic", 64, 4, 2, 256, 4, 2), ("fused_atomic", 64, 4, 2, 1024, 4, 2)]
        for mode, rows, nw, ns, seg, qw, qs in variants:
            fn.CONFIG.update(base, bwd_mode=mode, bwd_kv_rows=rows, bwd_kv_warps=nw, bwd_kv_stages=ns,
                             bwd_kv_seg=seg, bwd_q_warps=qw, bwd_q_stages=qs)
            inv_v = inv if seg == base["bwd_kv_seg"] else fn.build_inverse_index(idx, T // S, seg)
            ms = safe("bwd", bench, lambda inv_v=inv_v: fn.hsa_attention_bwd(do, q, k, v, idx, w, lse, S, D**-0.5,
                                                                              inv=inv_v))
            out["bwd"].append({"mode": mode, "rows": rows, "warps": nw, "stages": ns, "seg": seg,
                               "q_warps": qw, "q_stages": qs, "ms_without_index": ms})
            print(f"bwd {mode} rows={rows} warps={nw} stages={ns} seg={seg} q-side w{qw}s{qs}: {fmt(ms)}",
                  flush=True)
    fn.CONFIG.update(base)
    T2 = 131072
    C = T2 // S
    qr = torch.randn(1, T2, 1, DR, device="cuda", dtype=torch.bfloat16)
    lm = torch.randn(1, C, 1, DR, device="cuda", dtype=torch.bfloat16)
    sbase = dict(sf.CONFIG)
    with torch.no_grad():
        for bt, bc, bd, nw, ns, merge in [(64, 64, 64, 4, 2, 1), (64, 64, 64, 4, 2, 0), (64, 64, 64, 4, 2, 2),
                                          (128, 64, 64, 8, 2, 1), (128, 64, 64, 8, 2, 0), (64, 128, 64, 8, 2, 1),
                                          (128, 128, 64, 8, 2, 1), (128, 128, 64, 8, 2, 0), (128, 128, 64, 8, 3, 1),
                                          (64, 64, 128, 4, 2, 1), (128, 64, 64, 4, 3, 1), (32, 64, 64, 4, 2, 2),
                                          (256, 64, 64, 8, 2, 1)]:
            sf.CONFIG.update(sbase, block_t=bt, block_c=bc, block_d=bd, warps=nw, stages=ns, merge=merge)
            ms = safe("select", bench, lambda: sf.hsa_select_triton(qr, lm, topk=K, chunk_size=S))
            out["select"].append({"block_t": bt, "block_c": bc, "block_d": bd, "warps": nw, "stages": ns,
                                  "merge": merge, "ms": ms})
            print(f"select bt={bt} bc={bc} bd={bd} w={nw} s={ns} merge={merge}: {fmt(ms)}", flush=True)
    sf.CONFIG.update(sbase)
    return out


def run_mini_sweep():
    import hsa_kernels.hsa_attention.function as fn
    import hsa_kernels.hsa_select.function as sf

    res = {"fwd": [], "select": [], "index": None}
    q, k, v, idx, w = make_inputs(65536, 1)
    base = dict(fn.CONFIG)
    with torch.no_grad():
        res["index"] = safe("index", bench, lambda: fn.build_inverse_index(idx, 1024, base["bwd_kv_seg"]))
        print(f"inverse index build (64K): {fmt(res['index'])}", flush=True)
        # host-side cost: launching without waiting (what the GPU cannot hide when it idles)
        for label, f in (("index", lambda: fn.build_inverse_index(idx, 1024, base["bwd_kv_seg"])),
                         ("fwd", lambda: ours(q, k, v, idx, w))):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                f()
            host = (time.perf_counter() - t0) / 20 * 1e3
            torch.cuda.synchronize()
            res[f"host_ms_{label}"] = host
            print(f"host launch time per call, {label}: {host:.3f} ms", flush=True)
        for tma, nw, ns in ((False, 1, 3), (True, 1, 3), (True, 1, 2), (True, 2, 3), (True, 4, 3), (True, 1, 4)):
            fn.CONFIG.update(base, fwd_mode="query", use_tma=tma, fwd_warps=nw, fwd_stages=ns)
            ms = safe("fwd", bench, lambda: ours(q, k, v, idx, w))
            res["fwd"].append({"tma": tma, "warps": nw, "stages": ns, "ms": ms})
            print(f"fwd query-outer tma={tma} warps={nw} stages={ns}: {fmt(ms)}", flush=True)
        fn.CONFIG.update(base)
        do = torch.randn_like(q)
        _, lse = fn.hsa_attention_fwd(q, k, v, idx, w, S, D**-0.5, False)
        res["bwd"] = []
        for rows, nw, ns, seg in ((64, 4, 2, 1024), (64, 4, 1, 1024), (64, 4, 2, 512), (32, 4, 2, 1024),
                                  (128, 8, 2, 1024)):
            fn.CONFIG.update(base, bwd_kv_rows=rows, bwd_kv_warps=nw, bwd_kv_stages=ns, bwd_kv_seg=seg)
            inv = fn.build_inverse_index(idx, 1024, seg)
            ms = safe("bwd", bench, lambda inv=inv: fn.hsa_attention_bwd(do, q, k, v, idx, w, lse, S, D**-0.5,
                                                                          inv=inv))
            res["bwd"].append({"rows": rows, "warps": nw, "stages": ns, "seg": seg, "ms_without_index": ms})
            print(f"bwd fused rows={rows} warps={nw} stages={ns} seg={seg}: {fmt(ms)} (without index)", flush=True)
    fn.CONFIG.update(base)
    qr = torch.randn(1, 131072, 1, DR, device="cuda", dtype=torch.bfloat16)
    lm = torch.randn(1, 2048, 1, DR, device="cuda", dtype=torch.bfloat16)
    sbase = dict(sf.CONFIG)
    with torch.no_grad():
        for bt, bc, bd, nw, ns in [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 8, 4),
                                   (128, 128, 32, 8, 4), (128, 128, 64, 4, 4)]:
            sf.CONFIG.update(sbase, block_t=bt, block_c=bc, block_d=bd, warps=nw, stages=ns)
            ms = safe("select", bench, lambda: sf.hsa_select_triton(qr, lm, topk=K, chunk_size=S))
            res["select"].append({"block_t": bt, "block_c": bc, "block_d": bd, "warps": nw, "stages": ns, "ms": ms})
            print(f"select 128K bt={bt} bc={bc} bd={bd} w={nw} s={ns}: {fmt(ms)}", flush=True)
    sf.CONFIG.update(sbase)
    return res


# ------------------------------------------------------------------------------------------ report
def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def variant_names(results) -> list[str]:
    """Names of the extra columns of ours (``ours (chunk-outer fwd)``, ...), from the first shape's rows."""
    sh = results["shapes"][0] if results["shapes"] else {"attention": []}
    return [r["name"] for r in sh["attention"] if r["name"].startswith("ours (")]


_SELECTION_TEXT = {"uniform": "uniform over visible chunks",
                   "block": "one uniform draw per 64-token block, shared by its tokens"}


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
             f"({_SELECTION_TEXT[results.get('selection', 'uniform')]}); median ms over CUDA events; "
             f"command: `{results['command']}`", ""]
    lines += ["## Forward / forward+backward (ms)", "",
              f"| T (batch) | ours (default: {results['fwd_mode']}-outer fwd) | "
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


def _attention_config() -> dict[str, Any]:
    """The attention kernel's launch settings (``CONFIG`` of ``hsa_kernels.hsa_attention.function``)."""
    import hsa_kernels.hsa_attention.function as fn

    return fn.CONFIG


def run_benchmark(
    shapes: Iterable[tuple[int, int]] = SHAPES,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    published: str | Path | None = DEFAULT_PUBLISHED,
    variants: Collection[str] | str = ("chunk", "tma"),
    correctness: bool = True,
    sweep: bool = False,
    mini_sweep: bool = False,
    command: str | None = None,
    selection: str = "uniform",
) -> dict:
    """Run the benchmark on the current CUDA device and write its files into ``out_dir`` (created).

    With ``sweep``: only the launch-setting sweep (T=64K, selection at 128K), written to ``sweep.json``
    and returned; the other options are ignored. Otherwise: the correctness check (unless
    ``correctness=False``), the table over ``shapes`` (``results.json`` rewritten after every shape),
    ``results.md``, the extra settings of ``mini_sweep`` (into ``results.json``), ``results.png``;
    returns the results dict that :func:`markdown` formats. ``command`` is recorded in the results
    (default: ``python`` + ``sys.argv``). ``selection``: how the table's selections are drawn
    (:data:`SELECTIONS`; the correctness check and the sweeps always use ``uniform``). Progress goes to
    stdout. The caller checks :func:`cuda_problem` first.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
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
               "fwd_mode": _attention_config()["fwd_mode"], "selection": selection}
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
    if mini_sweep:
        results["mini_sweep"] = run_mini_sweep()
        (out / "results.json").write_text(json.dumps(results, indent=1))
    safe("plot", plot, results, out / "results.png")
    return results
