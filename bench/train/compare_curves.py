"""Compare the training-loss curves of runs (e.g. 1 GPU vs 2 GPUs under DDP at the same global batch).

Usage::

    python bench/train/compare_curves.py RUN_A RUN_B [--tol 0.02] [--out curves.png]

Prints the max / mean absolute difference per step and the final losses; exits 1 when the mean
absolute difference exceeds ``--tol`` (bf16 autocast and a different reduction order make the curves
equal only within noise, not bit for bit). Writes an overlay plot with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def losses(run: Path) -> list[float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in recs if "loss" in r]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs=2, type=Path)
    ap.add_argument("--tol", type=float, default=0.02, help="allowed mean |difference| of the loss curves")
    ap.add_argument("--out", type=Path, default=None, help="overlay plot (PNG)")
    args = ap.parse_args()
    a, b = (losses(r) for r in args.runs)
    n = min(len(a), len(b))
    if n == 0:
        print("no common steps", file=sys.stderr)
        return 1
    diffs = [abs(x - y) for x, y in zip(a[:n], b[:n])]
    mean = sum(diffs) / n
    print(f"steps compared: {n}")
    print(f"max |diff| {max(diffs):.5f}, mean |diff| {mean:.5f}, first 5 |diff| {[round(d, 6) for d in diffs[:5]]}")
    print(f"final loss: {args.runs[0]} {a[n - 1]:.4f} | {args.runs[1]} {b[n - 1]:.4f}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for run, ys in zip(args.runs, (a, b)):
            ax.plot(range(1, len(ys) + 1), ys, label=str(run), linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return 0 if mean <= args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
