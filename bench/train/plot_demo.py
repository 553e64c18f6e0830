"""Passkey accuracy against context length for several models, from ``hsa eval`` JSON files.

Usage::

    python bench/train/plot_demo.py --out curves.png --table \
        "RAMba=a.json+a_1m.json" "Mamba2 (no HSA)=b.json" ...

Each argument is ``LABEL=FILE[+FILE...]``: the cells of all files are merged (e.g. a grid and a later
run of one more length). Prints a markdown table (mean over depths, worst depth and samples per
length) with ``--table`` and writes a log-x plot of the mean with the worst depth as a band.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def fmt(n: int) -> str:
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def load(spec: str) -> tuple[str, dict[int, list[dict]]]:
    label, _, files = spec.partition("=")
    if not files:
        raise SystemExit(f"argument {spec!r}: expected LABEL=FILE[+FILE...]")
    cells: dict[int, list[dict]] = defaultdict(list)
    for f in files.split("+"):
        for c in json.loads(Path(f).read_text())["cells"]:
            cells[int(c["length"])].append(c)
    return label, dict(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=FILE[+FILE...]")
    p.add_argument("--out", type=Path, help="PNG path")
    p.add_argument("--table", action="store_true", help="print a markdown table")
    p.add_argument("--title", default="Passkey retrieval, trained at 4K tokens")
    args = p.parse_args(argv)
    runs = [load(s) for s in args.runs]
    lengths = sorted({n for _, cells in runs for n in cells})
    if args.table:
        print("| model | " + " | ".join(fmt(n) for n in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for label, cells in runs:
            row = []
            for n in lengths:
                cs = cells.get(n)
                if not cs:
                    row.append("-")
                    continue
                mean = 100 * sum(c["accuracy"] for c in cs) / len(cs)
                worst = 100 * min(c["accuracy"] for c in cs)
                row.append(f"{mean:.0f} (min {worst:.0f}; {len(cs)}x{cs[0]['samples']})")
            print(f"| {label} | " + " | ".join(row) + " |")
        print("\nCells: exact match %, mean over depths (worst depth; depths x samples per depth).")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        styles = [("o", "-", 3.0), ("s", "--", 2.0), ("^", "-.", 1.5), ("x", ":", 1.5)]
        for i, (label, cells) in enumerate(runs):
            marker, ls, lw = styles[i % len(styles)]
            xs = sorted(cells)
            mean = [100 * sum(c["accuracy"] for c in cells[n]) / len(cells[n]) for n in xs]
            worst = [100 * min(c["accuracy"] for c in cells[n]) for n in xs]
            line, = ax.plot(xs, mean, marker=marker, ls=ls, lw=lw, label=label)
            ax.fill_between(xs, worst, mean, color=line.get_color(), alpha=0.15)
        ax.axvline(4096, color="grey", ls=":", lw=1)
        ax.text(4096, 3, " train length", color="grey", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [fmt(n) for n in lengths])
        ax.set_ylim(-2, 102)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("passkey exact match (%)")
        ax.set_title(args.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left")
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
