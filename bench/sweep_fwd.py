"""Forward-schedule sweep of the HSA attention on one GPU (issue 3's forward bar), T=64K and 128K.

Times, for the bar's shapes (bf16, HQ=16 over H=1, D=64, S=64, top-8, uniform selection):
  - the default query-outer forward;
  - the inverse index alone (torch twin / Triton; plain and token-blocked);
  - the atomic chunk-outer forward's kernel alone (prebuilt index) over token block, rows, warps,
    stages and segment length, then the best one end to end (index included);
and prints every figure it measured. Usage (GPU machine, after ``. bench/device_env.sh``):

    python3 bench/sweep_fwd.py --out $OUT/sweep_fwd.json [--shapes 65536x1,131072x1] [--quick]
    python3 bench/sweep_fwd.py --block --out $OUT/sweep_block.json

``--block`` sweeps the token-block forward (``fwd_mode="block"``: rows per block, share threshold, warps,
stages) against the query-outer one, with the uniform selection and with one shared per 64-token block
(its JSON has the shapes keyed "TxB selection"; sweep_block*.json under bench/results/h200 came from
bench/sweep_block.py, the same code before it moved here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
from hsa_kernels import benchmark as bm


def sweep_shape(T: int, B: int, quick: bool) -> dict:
    """Every timing of one shape (see the module docstring)."""
    import hsa_kernels.hsa_attention.function as fn

    base = dict(fn.CONFIG)
    scale = bm.D ** -0.5
    C = T // bm.S
    q, k, v, idx, w = bm.make_inputs(T, B)
    r: dict = {"index": {}, "atomic_kernel": [], "end_to_end": {}}

    def fwd(mode, inv=None):
        return fn.hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, store_lse=False, inv=inv, mode=mode)

    with torch.no_grad():
        ref = fwd("query")[0].float()
        r["end_to_end"]["query"] = ms = bm.safe("query", bm.bench, lambda: fwd("query"))
        print(f"[{T}x{B}] query-outer fwd: {bm.fmt(ms)} ms", flush=True)
        for impl, tb in itertools.product(("torch", "triton"), (None, 4096)):
            fn.CONFIG.update(base, index_impl=impl)
            ms = bm.safe("index", bm.bench, lambda tb=tb: fn.build_inverse_index(idx, C, base["bwd_kv_seg"],
                                                                                  token_block=tb))
            r["index"][f"{impl} tb={tb}"] = ms
            print(f"[{T}x{B}] index {impl} token_block={tb}: {bm.fmt(ms)} ms", flush=True)
        fn.CONFIG.update(base)
        tbs = (1024, 4096, None) if quick else (512, 1024, 2048, 4096, 8192, 16384, None)
        grid = [(tb, 64, 4, 2, 1024) for tb in tbs]
        best = None

        def run(tb, rows, nw, ns, seg):
            nonlocal best
            fn.CONFIG.update(base, fwd_rows=rows, fwd_chunk_warps=nw, fwd_chunk_stages=ns, bwd_kv_seg=seg,
                             fwd_token_block=tb)
            inv = fn.build_inverse_index(idx, C, seg, token_block=tb)
            err = (fwd("chunk_atomic", inv)[0].float() - ref).abs().max().item()
            ms = bm.safe("atomic", bm.bench, lambda: fwd("chunk_atomic", inv))
            row = {"token_block": tb, "rows": rows, "warps": nw, "stages": ns, "seg": seg, "ms": ms,
                   "max_abs_diff_vs_query": err}
            r["atomic_kernel"].append(row)
            print(f"[{T}x{B}] chunk_atomic (index prebuilt) tb={tb} rows={rows} warps={nw} stages={ns} "
                  f"seg={seg}: {bm.fmt(ms)} ms  (max|o - query-outer o| {err:.2e})", flush=True)
            if ms is not None and (best is None or ms < best[0]):
                best = (ms, (tb, rows, nw, ns, seg))

        for cfg in grid:
            run(*cfg)
        tb = best[1][0]
        more = [(16, 4, 2), (32, 4, 2), (128, 8, 2), (64, 8, 2), (64, 2, 2), (64, 4, 1), (64, 4, 3),
                (128, 4, 2), (32, 2, 2)]
        if quick:
            more = more[:4]
        for rows, nw, ns in more:
            run(tb, rows, nw, ns, 1024)
        _, (tb, rows, nw, ns, _) = best
        for seg in (128, 256, 4096):
            run(tb, rows, nw, ns, seg)
        _, (tb, rows, nw, ns, seg) = best
        r["best_atomic"] = dict(zip(("token_block", "rows", "warps", "stages", "seg"), best[1]))
        for impl in ("torch", "triton"):
            fn.CONFIG.update(base, index_impl=impl, fwd_rows=rows, fwd_chunk_warps=nw, fwd_chunk_stages=ns,
                             bwd_kv_seg=seg, fwd_token_block=tb, fwd_mode="chunk_atomic")
            ms = bm.safe("e2e", bm.bench, lambda: bm.ours(q, k, v, idx, w))
            r["end_to_end"][f"chunk_atomic index={impl}"] = ms
            print(f"[{T}x{B}] chunk_atomic end to end (index {impl}) best settings: {bm.fmt(ms)} ms", flush=True)
        fn.CONFIG.update(base)
    return r


def sweep_block_shape(T: int, B: int, selection: str) -> list[dict]:
    """``--block``: the token-block forward's settings against the query-outer one, for one selection."""
    import hsa_kernels.hsa_attention.function as fn

    base = dict(fn.CONFIG)
    q, k, v, idx, w = bm.make_inputs(T, B, selection=selection)
    rows = []
    settings = [("query", None, None, None, None)]
    for share in (0, 8, 16, 24, 32):
        settings.append(("block", 64, share, 4, 3))
    settings += [("block", 64, 16, 8, 3), ("block", 64, 16, 4, 2), ("block", 32, 8, 2, 3), ("block", 32, 16, 4, 3),
                 ("block", 128, 32, 8, 3), ("block", 128, 16, 8, 2)]
    with torch.no_grad():
        ref = None
        for mode, nrows, share, nw, ns in settings:
            fn.CONFIG.update(base, fwd_mode=mode)
            if mode == "block":
                fn.CONFIG.update(fwd_block_rows=nrows, fwd_block_share_max=share, fwd_block_warps=nw,
                                 fwd_block_stages=ns)
            o = bm.safe(mode, bm.ours, q, k, v, idx, w)
            err = None
            if o is not None:
                ref = o.float() if ref is None else ref
                err = (o.float() - ref).abs().max().item()
            ms = bm.safe(mode, bm.bench, lambda: bm.ours(q, k, v, idx, w))
            row = {"mode": mode, "rows": nrows, "share_max": share, "warps": nw, "stages": ns, "ms": ms,
                   "max_abs_diff_vs_query": err}
            rows.append(row)
            print(f"[{T}x{B} {selection}] {mode} rows={nrows} share_max={share} warps={nw} stages={ns}: "
                  f"{bm.fmt(ms)} ms (max|o - query o| {err if err is None else f'{err:.2e}'})", flush=True)
    fn.CONFIG.update(base)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sweep_fwd.json")
    p.add_argument("--shapes", default="65536x1,131072x1")
    p.add_argument("--quick", action="store_true", help="fewer settings")
    p.add_argument("--block", action="store_true",
                   help="sweep the token-block forward instead, on uniform and block-shared selections")
    args = p.parse_args(argv)
    problem = bm.cuda_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    import hsa_kernels.hsa_attention.function as fn

    res: dict = {"config": dict(fn.CONFIG), "shapes": {}}
    for T, B in bm.parse_shapes(args.shapes):
        if args.block:
            for selection in bm.SELECTIONS:
                res["shapes"][f"{T}x{B} {selection}"] = sweep_block_shape(T, B, selection)
                torch.cuda.empty_cache()
        else:
            res["shapes"][f"{T}x{B}"] = sweep_shape(T, B, args.quick)
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
