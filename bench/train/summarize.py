"""Collect ``eval_passkey.json`` of several runs into one markdown table (accuracy per length).

Usage::

    python bench/train/summarize.py [--task=passkey] [--dir=random_filler] runs/ramba runs/mamba2 runs/swa-hsa
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(n: int) -> str:
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def main(argv: list[str]) -> int:
    task, sub = "passkey", ""
    while argv and argv[0].startswith("--"):
        key, _, value = argv.pop(0)[2:].partition("=")
        if key == "task":
            task = value
        elif key == "dir":  # results written with `hsa eval ... --out RUN/<dir>`
            sub = value
    rows, lengths = [], []
    for run in map(Path, argv):
        path = run / sub / f"eval_{task}.json"
        if not path.exists():
            print(f"(no {path}: not evaluated)\n")
            continue
        data = json.loads(path.read_text())
        lengths = sorted(set(lengths) | set(data["lengths"]))
        by_len = {int(k): v for k, v in data["accuracy_by_length"].items()}
        worst = {n: min(c["accuracy"] for c in data["cells"] if c["length"] == n) for n in data["lengths"]}
        train = json.loads((run / "train_config.json").read_text())["config"]
        rows.append((run.name, train["seq_len"], by_len, worst))
    print("| run | trained at | " + " | ".join(fmt(n) for n in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for name, seq, by_len, worst in rows:
        cells = [f"{by_len[n] * 100:.0f} (min {worst[n] * 100:.0f})" if n in by_len else "-" for n in lengths]
        print(f"| {name} | {seq} | " + " | ".join(cells) + " |")
    print("\nCells: mean exact-match % over depths (worst depth in parentheses).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
