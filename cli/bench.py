"""``hsa bench kernels``: the H200 kernel benchmark (``hsa_kernels.benchmark``) as a command.

Same options, defaults and output files as ``python bench/bench_kernels.py``. Without a CUDA GPU (or
without Triton) it stops before doing anything with one ``error:`` line and exit code 3 (a missing
dependency: the machine lacks what the command needs; the arguments themselves are fine). Bad
``--shapes``/``--variants`` are usage errors (exit 2) and are checked first, so they show on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from . import bench_model
from ._common import EXIT_MISSING_DEP, fail, guarded

app = typer.Typer(
    name="bench",
    help="Benchmarks (need a CUDA GPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _shapes(value: str) -> list[tuple[int, int]]:
    from hsa_kernels.benchmark import parse_shapes

    try:
        return parse_shapes(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shapes") from None


def _variants(value: str) -> set[str]:
    from hsa_kernels.benchmark import parse_variants

    try:
        return parse_variants(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variants") from None


@app.command("kernels")
@guarded
def kernels(
    shapes: str = typer.Option("4096x4,16384x2,65536x1,131072x1", "--shapes", metavar="TxB,...",
                               help="Sequence length x batch of each table row (T a multiple of 64, >= 512)."),
    out: Path = typer.Option(Path("bench/results/h200"), "--out", "-o",
                             help="Folder for results.json/.md/.png (sweep.json with --sweep); created."),
    published: Path = typer.Option(Path("third_party/hsa_pub/hsa_triton.py"), "--published", metavar="PATH",
                                   help="The published HSA Triton kernel file; absent -> its columns read '-'."),
    variants: str = typer.Option("chunk,tma,index", "--variants",
                                 help="Extra columns of ours: chunk (the other forward schedule), tma, index (the "
                                 "other inverse-index implementation); '' for none."),
    no_correctness: bool = typer.Option(False, "--no-correctness", help="Skip the bf16-vs-fp32 error check."),
    sweep: bool = typer.Option(False, "--sweep", help="Only sweep launch settings (T=64K) into sweep.json."),
    mini_sweep: bool = typer.Option(False, "--mini-sweep", help="After the table: a few extra settings."),
    selection: str = typer.Option("uniform", "--selection", help="How the table's selections are drawn: uniform "
                                  "(each token its own; the worst case) or block (shared per 64-token block)."),
) -> None:
    """Our Triton HSA kernels vs the published HSA kernel, fla's NSA and dense SDPA, on one CUDA GPU.

    Prints progress and the markdown table; writes results.json, results.md and results.png into --out.

    Missing competitors (published kernel file, fla) are left out and shown as '-'.

    Exit 3 without a CUDA GPU or Triton; same flags and files as python bench/bench_kernels.py.
    """
    from hsa_kernels import benchmark

    shape_list = _shapes(shapes)
    keep = _variants(variants)
    if selection not in benchmark.SELECTIONS:
        raise typer.BadParameter(f"{selection!r} is not one of {', '.join(benchmark.SELECTIONS)}",
                                 param_hint="--selection")
    problem = benchmark.cuda_problem()
    if problem:
        fail(problem, EXIT_MISSING_DEP)
    command = " ".join(["hsa", *sys.argv[1:]])
    results = benchmark.run_benchmark(shape_list, out, published=published, variants=keep,
                                      correctness=not no_correctness, sweep=sweep, mini_sweep=mini_sweep,
                                      command=command, selection=selection)
    if sweep:
        typer.echo(f"wrote {out / 'sweep.json'}")
        return
    typer.echo(benchmark.markdown(results))
    for present, what in ((results["published_kernel"], f"published HSA kernel (not loaded from {published})"),
                          (results["fla_nsa"], "fla NSA (fla not installed or failed to import)")):
        if not present:
            typer.echo(f"note: {what}: its columns read '-'")
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'results.png'}")


app.command("model")(bench_model.model)
