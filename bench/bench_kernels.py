"""HSA kernel benchmark (issue 3's table): a thin wrapper over ``hsa_kernels.benchmark``.

The code lives in the installed package (``kernels/benchmark.py``) and is also reachable as
``hsa bench kernels`` with the same flags; this script stays so that the commands recorded in
``bench/results/h200/README.md`` keep working. It needs ``hsa_kernels`` importable: installed, or the
checkout on ``PYTHONPATH`` through ``bench/device_env.sh``.

Usage (on the GPU machine):
    python bench/bench_kernels.py --out bench/results/h200 --published third_party/hsa_pub/hsa_triton.py
    python bench/bench_kernels.py --sweep          # launch-setting sweep of this project's kernels

Exit codes: 0 ok, 2 bad arguments, 3 no CUDA GPU (or Triton missing).
"""

from __future__ import annotations

import argparse
import os
import sys

from hsa_kernels import benchmark


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=benchmark.DEFAULT_OUT)
    p.add_argument("--published", default=benchmark.DEFAULT_PUBLISHED)
    p.add_argument("--shapes", default=benchmark.DEFAULT_SHAPES, help="TxB,TxB,...")
    p.add_argument("--sweep", action="store_true", help="only sweep launch settings (T=64K)")
    p.add_argument("--mini-sweep", action="store_true", help="after the table: a few extra settings")
    p.add_argument("--variants", default=benchmark.DEFAULT_VARIANTS,
                   help="extra columns of ours: chunk (other fwd schedule), tma")
    p.add_argument("--no-correctness", action="store_true")
    p.add_argument("--selection", default="uniform", choices=benchmark.SELECTIONS,
                   help="uniform (each token its own selection) or block (shared per 64-token block)")
    args = p.parse_args(argv)
    try:
        shapes = benchmark.parse_shapes(args.shapes)
    except ValueError as exc:
        p.error(f"argument --shapes: {exc}")
    try:
        variants = benchmark.parse_variants(args.variants)
    except ValueError as exc:
        p.error(f"argument --variants: {exc}")
    problem = benchmark.cuda_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    results = benchmark.run_benchmark(shapes, args.out, published=args.published, variants=variants,
                                      correctness=not args.no_correctness, sweep=args.sweep,
                                      mini_sweep=args.mini_sweep, selection=args.selection)
    if not args.sweep:
        print(benchmark.markdown(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
