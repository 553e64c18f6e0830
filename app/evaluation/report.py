"""Presenting evaluation results: a rich table, the JSON file and the depth x length heatmap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..runtime.checkpoint import write_text_atomic
from .core import CellResult, EvalResult


def format_length(n: int) -> str:
    """1024 -> ``1k``, 1048576 -> ``1m``, 1000 -> ``1000``."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_lengths(text: str) -> list[int]:
    """``"512,1k,2k,1m"`` -> ``[512, 1024, 2048, 1048576]`` (k = 1024, m = 1024**2)."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = {"k": 1 << 10, "m": 1 << 20}.get(p[-1], 1)
        num = p[:-1] if mult > 1 else p
        try:
            value = float(num) * mult
        except ValueError:
            raise ValueError(f"bad length {part!r}: use integers with an optional k or m suffix") from None
        if value < 1 or value != int(value):
            raise ValueError(f"bad length {part!r}")
        out.append(int(value))
    if not out:
        raise ValueError("no lengths given")
    return out


def parse_depths(text: str) -> list[float]:
    """``"0.1,0.5,0.9"`` -> floats in ``[0, 1]``."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        d = float(part)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depth {d} is outside [0, 1]")
        out.append(d)
    if not out:
        raise ValueError("no depths given")
    return out


def rich_table(result: EvalResult, title: str | None = None):
    """Depth rows x length columns of exact-match accuracy (%), with a mean row."""
    from rich.table import Table

    table = Table(title=title or f"{result.task}: exact match (%)", show_lines=False)
    table.add_column("depth", justify="right")
    for n in result.lengths:
        table.add_column(format_length(n), justify="right")
    for d in result.depths:
        cells = []
        for n in result.lengths:
            acc = result.cell(n, d).accuracy * 100
            color = "green" if acc >= 95 else "yellow" if acc >= 50 else "red"
            cells.append(f"[{color}]{acc:.1f}[/{color}]")
        table.add_row("random" if d is None else f"{d:.2f}", *cells)
    means = result.by_length()
    table.add_row("[bold]mean", *[f"[bold]{means[n] * 100:.1f}" for n in result.lengths])
    return table


def interval_note(result: EvalResult) -> str:
    """One line under the table: how far a cell's figure can be from the model's rate, as the 95%
    (Wilson) interval of the lowest cell (every cell's is in the JSON); empty without cells."""
    if not result.cells:
        return ""
    low = min(result.cells, key=lambda c: (c.accuracy, c.samples))
    lo, hi = low.interval()
    sizes = "/".join(map(str, sorted({c.samples for c in result.cells})))
    return (f"{sizes} samples a cell; 95% (Wilson) interval of the lowest cell, {low.accuracy * 100:.1f}%: "
            f"{lo * 100:.0f}-{hi * 100:.0f}% (every cell's in the JSON)")


def write_json(result: EvalResult, path: Path) -> Path:
    write_text_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def heatmap(result: EvalResult, path: Path, title: str | None = None) -> Path:
    """Depth (rows) x length (columns) heatmap of exact-match accuracy, annotated (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # A cell with no samples (a pooled grid where not every length ran at every depth) is blank, not 0%.
    grid = np.array([[heatmap_value(result.cell(n, d)) for n in result.lengths] for d in result.depths])
    # wide enough for the title on a grid of few lengths
    fig, ax = plt.subplots(figsize=(max(4.8, 1.2 + 1.1 * len(result.lengths)), 1.2 + 0.6 * len(result.depths)))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(result.lengths)), [format_length(n) for n in result.lengths])
    ax.set_yticks(range(len(result.depths)), ["rand" if d is None else f"{d:.2f}" for d in result.depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth of the key")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, "-" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=9)
    train_len = result.meta.get("train_seq_len")
    ax.set_title(title or f"{result.task} exact match (%)" + (f", trained at {train_len}" if train_len else ""),
                 fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def heatmap_value(cell: CellResult) -> float:
    """A heatmap cell's exact match in %, NaN for a cell with no samples (drawn blank)."""
    return cell.accuracy * 100 if cell.samples else float("nan")


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` atomically (beside it, then renamed) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
