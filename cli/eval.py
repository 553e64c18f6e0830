"""``hsa eval TASK RUN --lengths 512,1k,2k,4k --depths 0.1,0.5,0.9``: exact-match accuracy far beyond
the training length, as a table, ``RUN/eval_<task>.json`` and a depth x length heatmap PNG."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import EXIT_USAGE, PLUGIN_OPTION, check_writable, console, fail, guarded, load_plugins


@guarded
def eval_task(
    task: str = typer.Argument(..., help="Task name (passkey, mqar, niah, niah_multikey, variable_tracking, ...)."),
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
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Evaluate a trained model on a task over a depth x length grid."""
    from hsa_core.evaluation import format_length, parse_depths, parse_lengths, rich_table, run_eval
    from hsa_core.tasks import parse_task_options

    load_plugins(plugin)
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
        result, jpath, ppath = run_eval(run, task, lens, deps, samples=samples, seed=seed, segment_len=segment_len,
                                        max_batch_tokens=batch_tokens, device=device, dtype=dtype,
                                        task_overrides=opts, out=out, on_cell=show,
                                        time_limit=time_limit)
    except (ValueError, FileNotFoundError) as exc:
        if type(exc) not in (ValueError, FileNotFoundError):
            raise
        fail(str(exc), EXIT_USAGE)
    console().print(rich_table(result))
    if result.meta.get("skipped_lengths"):
        console().print("time limit reached; not evaluated: "
                        + ", ".join(format_length(n) for n in result.meta["skipped_lengths"]))
    console().print(f"wrote {jpath} and {ppath}")
