"""``hsa eval TASK RUN --lengths 512,1k,2k,4k --depths 0.1,0.5,0.9``: exact-match accuracy far beyond
the training length, as a table, ``RUN/eval_<task>.json`` and a depth x length heatmap PNG.

``hsa eval ppl RUN --data DIR --lengths 4k,16k,64k [--compare RUN...]``: perplexity by position over
long validation documents (:mod:`hsa_app.evaluation.perplexity`), ``eval_ppl.json`` and ``.png``.
``hsa eval passkey RUN --filler text:DIR``: the passkey inside natural text, in the run's tokenizer."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import EXIT_USAGE, PLUGIN_OPTION, check_writable, console, fail, guarded, load_plugins


@guarded
def eval_task(
    task: str = typer.Argument(..., help="Task name (passkey, mqar, niah, niah_multikey, variable_tracking, ...), "
                               "or ppl (perplexity by position; needs --data)."),
    run: Path = typer.Argument(..., help="Run directory of `hsa train` (or a model directory)."),
    lengths: str = typer.Option("512,1k,2k,4k", "--lengths", "-l", help="Context lengths (k = 1024, m = 1024^2)."),
    depths: str = typer.Option("0.1,0.5,0.9", "--depths", "-d", help="Relative depths of the key in [0, 1]."),
    samples: int = typer.Option(20, "--samples", "-n", min=1, help="Samples per (length, depth) cell."),
    seed: int = typer.Option(1234, "--seed"),
    segment_len: int = typer.Option(4096, "--segment-len", min=1, help="Prefill segment (bounds activations)."),
    batch_tokens: int = typer.Option(1 << 17, "--batch-tokens", min=1, help="Tokens per forward (sets the batch)."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA), fp32 or bf16."),
    task_option: list[str] | None = typer.Option(None, "--task-option", "-t", metavar="KEY=VALUE",
                                                 help="Override a task option (default: the training run's)."),
    time_limit: float | None = typer.Option(
        None, "--time-limit", min=0, help="Skip a length that would end past this many seconds (predicted from the "
        "previous length's time); results so far are written, skipped lengths listed."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the JSON/PNG (default: RUN)."),
    data: Path | None = typer.Option(None, "--data", help="ppl: a folder of `hsa data prepare` (its validation "
                                     "documents are scored), prepared with the run's tokenizer."),
    compare: list[Path] | None = typer.Option(None, "--compare", help="ppl: more runs scored on the same "
                                              "documents, one line each in the plot (repeatable)."),
    docs: int = typer.Option(8, "--docs", min=1, help="ppl: validation documents scored (of >= the longest length)."),
    filler: str | None = typer.Option(None, "--filler", help="passkey: text:DIR puts the passkey inside natural "
                                      "text from DIR's validation documents, in the run's tokenizer."),
    offload: bool | None = typer.Option(None, "--offload/--no-offload", help="Keep the chunk memory's K/V in "
                                        "host memory, copying in only the selected chunks (default: as the "
                                        "layout says)."),
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Evaluate a trained model on a task over a depth x length grid, or its perplexity by position (ppl)."""
    from hsa_app.evaluation import format_length, interval_note, parse_depths, parse_lengths, rich_table, run_eval
    from hsa_app.runtime.pinned import fast_pinned_memory
    from hsa_app.tasks import parse_task_options

    from hsa_core.generation import footprint_line

    from ._data import data_errors
    from ._progress import PrefillDisplay

    fast_pinned_memory()  # before anything starts CUDA
    load_plugins(plugin)
    if task == "ppl":
        with data_errors():
            _ppl(run, data, compare or [], lengths, docs, segment_len, batch_tokens, device, dtype, out, offload)
        return
    if data is not None or compare:
        fail("--data and --compare are options of `hsa eval ppl`", EXIT_USAGE)
    try:
        lens, deps = parse_lengths(lengths), parse_depths(depths)
        opts = parse_task_options(task_option)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if not run.exists():
        fail(f"{run} does not exist", EXIT_USAGE)
    # Before the evaluation, not after it: a long grid must not be lost to an unwritable folder.
    check_writable(out if out is not None else run, option="--out" if out is not None else "RUN (the output folder)")

    def show(cell) -> None:
        d = "random" if cell.depth is None else f"{cell.depth:.2f}"
        console().print(f"  {format_length(cell.length):>6} depth {d}: {cell.accuracy * 100:5.1f}% "
                      f"({cell.samples} samples, {cell.seconds:.1f}s)")

    try:
        with data_errors(), PrefillDisplay(console()) as prefill_progress:
            result, jpath, ppath = run_eval(run, task, lens, deps, samples=samples, seed=seed,
                                            segment_len=segment_len, max_batch_tokens=batch_tokens, device=device,
                                            dtype=dtype, task_overrides=opts, out=out, on_cell=show,
                                            time_limit=time_limit, filler=filler, offload=offload,
                                            on_prefill=prefill_progress)
    except (ValueError, FileNotFoundError) as exc:
        if type(exc) not in (ValueError, FileNotFoundError):
            raise
        fail(str(exc), EXIT_USAGE)
    console().print(rich_table(result))
    console().print(interval_note(result), highlight=False)
    for n, f in result.meta.get("footprint", {}).items():
        console().print(f"  {format_length(int(n)):>6}: {footprint_line(f)}", soft_wrap=True)
    if result.meta.get("skipped_lengths"):
        console().print("time limit reached; not evaluated: "
                        + ", ".join(format_length(n) for n in result.meta["skipped_lengths"]))
    console().print(f"wrote {jpath} and {ppath}")


def _ppl(run: Path, data: Path | None, compare: list[Path], lengths: str, docs: int, segment_len: int,
         batch_tokens: int, device: str, dtype: str, out: Path | None, offload: bool | None) -> None:
    from hsa_app.evaluation import format_length, parse_lengths
    from hsa_app.evaluation.perplexity import rich_ppl_table, run_ppl

    if data is None:
        fail("hsa eval ppl needs --data DIR (a folder of `hsa data prepare`)", EXIT_USAGE)
    try:
        lens = parse_lengths(lengths)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    runs = [run, *compare]
    for r in runs:
        if not r.exists():
            fail(f"{r} does not exist", EXIT_USAGE)
    last: dict[str, int] = {}

    def progress(label: str, done: int, total: int) -> None:
        pct = int(100 * done / max(1, total))
        if pct // 25 != last.get(label, -1):
            last[label] = pct // 25
            console().print(f"  {label}: {done:,} / {total:,} tokens")

    try:
        result, jpath, ppath = run_ppl(runs, data, lens, docs=docs, segment_len=segment_len,
                                       max_batch_tokens=batch_tokens, device=device, dtype=dtype, out=out,
                                       on_progress=progress, offload=offload)
    except (ValueError, FileNotFoundError) as exc:
        if type(exc) not in (ValueError, FileNotFoundError):
            raise
        fail(str(exc), EXIT_USAGE)
    if result["dropped_lengths"]:
        console().print("no validation document is long enough for: "
                        + ", ".join(format_length(n) for n in result["dropped_lengths"]))
    console().print(rich_ppl_table(result))
    console().print(f"wrote {jpath} and {ppath}")
