"""Sweep of the token-block forward (``fwd_mode="block"``) against the query-outer one, on the bar's
shapes (bf16, HQ=16 over H=1, D=64, S=64, top-8) with the uniform selection and with one selection
shared per 64-token block. Prints every figure it measured. Usage (GPU machine, after
``. bench/device_env.sh``):

    python3 bench/sweep_block.py --out $OUT/sweep_block.json [--shapes 65536x1,131072x1]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from hsa_kernels import benchmark as bm


def sweep(T: int, B: int, selection: str) -> list[dict]:
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
    p.add_argument("--out", default="sweep_block.json")
    p.add_argument("--shapes", default="65536x1,131072x1")
    args = p.parse_args(argv)
    problem = bm.cuda_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    res = {}
    for T, B in bm.parse_shapes(args.shapes):
        for selection in bm.SELECTIONS:
            res[f"{T}x{B} {selection}"] = sweep(T, B, selection)
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
