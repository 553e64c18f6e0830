"""``hsa bench model``: whole-model training throughput on one CUDA GPU (:mod:`hsa_app.training.throughput`).

For each layout and each ``--seq-len`` (with its ``--batch``), one fresh build timed over real
training steps, beside (unless ``--no-compare``) the same layout without its HSA layers and a
Transformer of equal parameter count. Prints a table; writes ``model_bench.json`` and
``model_bench.png`` (tokens/s and peak memory per shape) into ``--out``. Exit 3 without CUDA.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ._common import EXIT_MISSING_DEP, PLUGIN_OPTION, SET_OPTION, fail, guarded, load_plugins, load_spec_from


def _ints(text: str, what: str) -> list[int]:
    from hsa_app.evaluation.report import parse_lengths

    try:
        return parse_lengths(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=what) from None


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :class:`ModelBenchResult` dicts."""
    lines = ["| layout | variant | params | T x B | ckpt | tokens/s | step ms | TFLOP/s | MFU | peak GiB | "
             "first step s | loss |", "|" + "---|" * 12]
    for r in rows:
        tput = r["error"] if r["error"] else _fmt(r["tokens_per_s"], ",.0f")
        lines.append(
            f"| {r['name']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['seq_len']} x {r['batch']} | "
            f"{'on' if r['checkpointing'] else 'off'} | {tput} | {_fmt(r['step_ms'], '.1f')} | "
            f"{_fmt(r['tflops'], '.0f')} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_gib'], '.1f')} | "
            f"{_fmt(r['first_step_s'], '.1f')} | {_fmt(r['loss'], '.3f')} |")
    return "\n".join(lines)


def parts_table(rows: list[dict[str, Any]]) -> str:
    """Time share of each part per measured row (ms and % of the step)."""
    lines = []
    for r in rows:
        if not r["parts_ms"] or not r["step_ms"]:
            continue
        shares = ", ".join(f"{k} {v:.1f} ms ({v / r['step_ms']:.0%})" for k, v in r["parts_ms"].items())
        lines.append(f"- {r['name']} / {r['variant']} / {r['seq_len']} x {r['batch']}: {shares}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["tokens_per_s"]]
    shapes = sorted({(r["seq_len"], r["batch"]) for r in rows})
    labels = sorted({(r["name"], r["variant"], r["checkpointing"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(labels))
    for j, (name, variant, ck) in enumerate(labels):
        tput, mem = [], []
        for shape in shapes:
            match = [r for r in ok if (r["seq_len"], r["batch"]) == shape and
                     (r["name"], r["variant"], r["checkpointing"]) == (name, variant, ck)]
            tput.append(match[0]["tokens_per_s"] / 1e3 if match else 0)
            mem.append(match[0]["peak_gib"] if match else 0)
        xs = [i + j * width for i in range(len(shapes))]
        label = f"{name} ({variant}{', ckpt' if ck else ''})"
        axes[0].bar(xs, tput, width, label=label)
        axes[1].bar(xs, mem, width, label=label)
    for ax, title in ((axes[0], "training tokens/s (thousands)"), (axes[1], "peak memory (GiB)")):
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(shapes))],
                      [f"{t} x {b}" for t, b in shapes])
        ax.set_title(title)
        ax.set_xlabel("tokens x batch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def model(
    specs: list[str] = typer.Argument(..., metavar="SPEC...", help="Layout files or preset names."),
    seq_len: str = typer.Option("4k", "--seq-len", metavar="T,...", help="Tokens per sequence, e.g. 4k,16k,64k."),
    batch: str = typer.Option("1", "--batch", metavar="B,...",
                              help="Sequences per step: one value for every --seq-len, or one per length."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps per row."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps before timing (after the first step)."),
    checkpointing: str = typer.Option("off", "--checkpointing", help="Activation checkpointing: off, on or both."),
    compare: bool = typer.Option(True, "--compare/--no-compare",
                                 help="Also time the layout without HSA and an equal-size Transformer."),
    parts: bool = typer.Option(True, "--parts/--no-parts", help="Time each part alone (share of the step)."),
    out: Path = typer.Option(Path("bench/results/model"), "--out", "-o", help="Folder for the JSON and PNG."),
    set_: list[str] = SET_OPTION,
    plugin: list[Path] = PLUGIN_OPTION,
) -> None:
    """Training throughput of whole models on one CUDA GPU: tokens/s, TFLOP/s, MFU, peak memory,
    first-step time and the time share of each part, beside the no-HSA twin and an equal Transformer.

    Exit 3 without a CUDA GPU.
    """
    import torch

    lengths = _ints(seq_len, "--seq-len")
    batches = _ints(batch, "--batch")
    if len(batches) not in (1, len(lengths)):
        raise typer.BadParameter(f"give one batch size or {len(lengths)} (one per --seq-len)", param_hint="--batch")
    if checkpointing not in ("off", "on", "both"):
        raise typer.BadParameter(f"{checkpointing!r} is not one of off, on, both", param_hint="--checkpointing")
    if not torch.cuda.is_available():
        fail("hsa bench model needs a CUDA GPU (none is visible to torch)", EXIT_MISSING_DEP)
    from hsa_app.training.throughput import bench_layout, equal_transformer_spec, no_hsa_spec

    from hsa_core.layout import resolve

    load_plugins(plugin)
    out.mkdir(parents=True, exist_ok=True)
    shapes = list(zip(lengths, batches * len(lengths) if len(batches) == 1 else batches))
    ck_modes = {"off": [False], "on": [True], "both": [False, True]}[checkpointing]
    rows: list[dict[str, Any]] = []
    for source in specs:
        _, raw = load_spec_from(source, set_)
        spec = resolve(raw)
        name = spec.get("name", source)
        variants: list[tuple[str, dict[str, Any]]] = [("layout", spec)]
        if compare:
            from hsa_core.model import HSALanguageModel

            params = HSALanguageModel.from_spec(spec, device="meta").num_parameters()
            if any(layer["role"] == "retrieval" for layer in spec["layers"]):
                variants.append(("no-hsa", resolve(no_hsa_spec(spec))))
            variants.append(("transformer", equal_transformer_spec(spec, params)))
        for t, b in shapes:
            for variant, vspec in variants:
                for ck in ck_modes:
                    typer.echo(f"{name} / {variant} / {t} x {b} / checkpointing {'on' if ck else 'off'} ...")
                    res = bench_layout(vspec, name=name, variant=variant, seq_len=t, batch=b, steps=steps,
                                       warmup=warmup, checkpointing=ck, parts=parts and variant == "layout")
                    rows.append(res.to_dict())
                    typer.echo("  " + (res.error or f"{res.tokens_per_s:,.0f} tokens/s, {res.peak_gib:.1f} GiB, "
                                                      f"first step {res.first_step_s:.1f} s"))
                    (out / "model_bench.json").write_text(json.dumps(_document(rows), indent=2))
    typer.echo(table(rows))
    typer.echo(parts_table(rows))
    plot(rows, out / "model_bench.png")
    typer.echo(f"wrote {out / 'model_bench.json'} and {out / 'model_bench.png'}")


def _document(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import platform

    import torch
    from hsa_app.training.throughput import H200_BF16_PEAK_TFLOPS

    return {"command": " ".join(["hsa", *sys.argv[1:]]), "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "python": platform.python_version(),
            "mfu_peak_tflops": H200_BF16_PEAK_TFLOPS, "rows": rows}


model = guarded(model)
