#!/usr/bin/env python3
"""Markdown summary of the real-text demonstration's results folder (run_all.sh's OUT_DIR):
training (steps, tokens, time, final train and validation loss), perplexity by position
(``eval_ppl.json``) and passkey in natural-text filler (``<name>_eval_passkey_text.json``).

    python bench/train/realtext/summarize.py bench/results/h200_realtext > realtext.md
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from hsa_app.evaluation.report import format_length as fmt_len
from hsa_app.evaluation.report import save_figure


def _by_quarter(values: list[float]) -> str:
    """``a / b / c / d%``: the mean of each quarter of ``values`` (in order) in percent; ``-`` for none."""
    if not values:
        return "-"
    n = len(values)
    quarters = [values[i * n // 4:(i + 1) * n // 4] or values[i * n // 4:i * n // 4 + 1] for i in range(4)]
    return " / ".join(f"{100 * sum(q) / len(q):.0f}" for q in quarters) + "%"


def training_rows(out: Path) -> list[str]:
    """One row per ``<name>_metrics.jsonl``. ``first step (s)``: the wall time from the process's start to
    the end of its first step (set-up, compiling and tuning kernels): what a short fine-tune does not
    spend on steps."""
    rows = ["| model | steps | tokens | time (s) | first step (s) | tokens/s | final LM train loss | "
            "final val loss (ppl) | passkey batches, exact by quarter |", "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(out.glob("*_metrics.jsonl")):
        name = path.name.removesuffix("_metrics.jsonl")
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r for r in recs if "loss" in r]
        evals = [r["eval"] for r in recs if "eval" in r and "val_loss" in r["eval"]]
        if not steps:
            continue
        last = steps[-1]
        # a resumed run's "time" starts again from 0: the segments' times add up
        elapsed = sum(a["time"] for a, b in itertools.pairwise(steps) if b["time"] < a["time"]) + last["time"]
        tps = sorted(r["tokens_per_s"] for r in steps[3:] or steps)[len(steps[3:] or steps) // 2]
        val = f"{evals[-1]['val_loss']:.3f} ({evals[-1]['val_ppl']:.2f})" if evals else "-"
        first = f"{steps[0]['time']:.0f}" if steps[0]["step"] == 1 else "-"  # (logged when log_every is 1)
        # A fine-tune mixes LM and passkey batches; a passkey batch (the rows with "acc") has a loss on its
        # answer tokens only (near 0 once learned), so the train loss shown is the last LM batch's.
        lm = [r for r in steps if "acc" not in r]
        lm_loss = f"{lm[-1]['loss']:.3f}" if lm else "-"
        rows.append(f"| {name} | {last['step']} | {last['tokens']:,} | {elapsed:.0f} | {first} | {tps:,.0f} | "
                    f"{lm_loss} | {val} | {_by_quarter([r['acc'] for r in steps if 'acc' in r])} |")
    return rows


def plot_training(out: Path) -> Path | None:
    """``training.png``: train loss (smoothed over 10 steps) and validation loss against tokens seen,
    one colour per model (its passkey fine-tune dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(out.glob("*_metrics.jsonl"))
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours: dict[str, str] = {}
    for path in runs:
        name = path.name.removesuffix("_metrics.jsonl")
        base, pk, _ = name.partition("_pk")  # ramba, ramba_pk512 (short-sequence stage), ramba_pk
        fine_tune = bool(pk)
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        lm = [r for r in recs if "loss" in r and "acc" not in r]  # passkey batches have an exact-match figure
        if not lm:
            continue
        loss = [r["loss"] for r in lm]
        smooth = [sum(loss[max(0, i - 9):i + 1]) / len(loss[max(0, i - 9):i + 1]) for i in range(len(loss))]
        line, = ax.plot([r["tokens"] / 1e6 for r in lm], smooth, ls="--" if fine_tune else "-",
                        color=colours.get(base), label=f"{name} train")
        colours.setdefault(base, line.get_color())
        evals = [(r["step"], r["eval"]["val_loss"]) for r in recs if "val_loss" in r.get("eval", {})]
        tokens_at = {r["step"]: r["tokens"] for r in lm}
        pts = [(tokens_at[s] / 1e6, v) for s, v in evals if s in tokens_at]
        if pts and not fine_tune:
            ax.plot(*zip(*pts), "o", color=colours[base], label=f"{name} validation")
    ax.set_xlabel("tokens seen (M; a fine-tune counts from its own start)")
    ax.set_ylabel("language-model loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "training.png")


def ppl_rows(out: Path) -> list[str]:
    path = out / "eval_ppl.json"
    if not path.is_file():
        return ["(no eval_ppl.json)"]
    res = json.loads(path.read_text())
    models = res["models"]
    head = [f"{fmt_len(b['start'])}-{fmt_len(b['end'])}" for b in models[0]["buckets"]]
    rows = [f"{len(res['documents'])} validation documents of >= {fmt_len(res['evaluated_length'])} tokens "
            f"(lengths {', '.join(f'{n:,}' for n in res['document_lengths'])}); perplexity by token position:", "",
            "| model | " + " | ".join(head) + " | all |", "|---|" + "---|" * (len(head) + 1)]
    for m in models:
        rows.append(f"| {m['label']} | " + " | ".join(f"{b['ppl']:.3f}" for b in m["buckets"])
                    + f" | {m['overall']['ppl']:.3f} |")
    fine = [f"{fmt_len(b['start'])}-{fmt_len(b['end'])}" for b in models[0]["fine"]]
    rows += ["", "Power-of-two buckets (the plot, `eval_ppl.png`):", "",
             "| model | " + " | ".join(fine) + " |", "|---|" + "---|" * len(fine)]
    for m in models:
        rows.append(f"| {m['label']} | " + " | ".join(f"{b['ppl']:.2f}" for b in m["fine"]) + " |")
    if res.get("dropped_lengths"):
        rows.append(f"\nNo validation document reaches: {', '.join(fmt_len(n) for n in res['dropped_lengths'])}.")
    return rows


def percent(fraction: float) -> str:
    """A fraction as a percentage to one decimal, without a trailing zero: 0.825 -> 82.5, 0.95 -> 95."""
    return f"{fraction * 100:.1f}".removesuffix(".0")


def passkey_rows(out: Path) -> list[str]:
    """One table per model; a model's ``<name>_eval_passkey_text*.json`` files (an evaluation of more
    lengths in a later call, say ``_long``) are merged, the later file's cells winning."""
    rows: list[str] = []
    by_model: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*_eval_passkey_text*.json")):
        by_model.setdefault(path.name.partition("_eval_passkey_text")[0], []).append(json.loads(path.read_text()))
    for name, results in by_model.items():
        cells = {(c["length"], c["depth"]): c for res in results for c in res["cells"]}
        lengths = sorted({n for n, _ in cells})
        depths = sorted({d for _, d in cells})
        samples = sorted({str(res["meta"].get("samples_per_cell")) for res in results})
        rows += [f"**{name}** (exact match %, {'/'.join(samples)} samples per cell):", "",
                 "| depth | " + " | ".join(fmt_len(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for d in depths:
            rows.append(f"| {d} | " + " | ".join(percent(cells[n, d]["accuracy"]) if (n, d) in cells else "-"
                                                  for n in lengths) + " |")
        low = min(cells.values(), key=lambda c: c["accuracy"])
        if "accuracy_ci95" in low:  # written since 2026-12-02
            lo, hi = low["accuracy_ci95"]
            rows.append(f"\n95% (Wilson) interval of the lowest cell ({fmt_len(low['length'])}, depth {low['depth']}, "
                        f"{percent(low['accuracy'])}%): {percent(lo)}-{percent(hi)}%.")
        skipped = sorted({n for res in results for n in res["meta"].get("skipped_lengths") or []} - set(lengths))
        rows += ([f"\n(not evaluated within the time limit: {skipped})"] if skipped else []) + [""]
    return rows or ["(no passkey results)"]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/h200_realtext")
    print("# Language models on real text\n")
    man = out / "data_manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        t, s = m["tokenizer"], m["splits"]
        print(f"Data: tokenizer {t['spec']} (vocabulary {t['vocab_size']:,}); train {s['train']['documents']} "
              f"documents / {s['train']['tokens']:,} tokens, validation {s['validation']['documents']} documents / "
              f"{s['validation']['tokens']:,} tokens (longest {s['validation']['longest_document']:,}).\n")
    print("## Training\n")
    print("\n".join(training_rows(out)) + "\n")
    if plot_training(out) is not None:
        print("Loss curves: `training.png`.\n")
    print("## Perplexity by position\n")
    print("\n".join(ppl_rows(out)) + "\n")
    print("## Passkey in natural-text filler (after the passkey fine-tune)\n")
    print("\n".join(passkey_rows(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
