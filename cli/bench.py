"""``hsa bench kernels``: the kernel benchmark (``bench/bench_kernels.py`` of the checkout) as a command.

The benchmark harness is not part of the installed package: it lives under ``bench/`` in the
repository, and this command loads it from the checkout the package was installed from (an editable
install, or ``bench/device_env.sh`` on the GPU machine), else from ``./bench`` of the working
directory. Outside a checkout it stops with one ``error:`` line and exit code 3.

Same options, defaults and output files as ``python bench/bench_kernels.py``. Without a CUDA GPU (or
without Triton) it stops before doing anything with one ``error:`` line and exit code 3 (the machine
lacks what the command needs; the arguments themselves are fine). Bad ``--shapes``/``--variants`` are
usage errors (exit 2) and are checked first, so they show on any machine with a checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import typer

from . import bench_model
from ._common import EXIT_MISSING_DEP, fail, guarded

#: Where the harness sits inside a checkout.
HARNESS = Path("bench") / "bench_kernels.py"
#: Its module name once loaded (one module object per process, so its settings are shared).
MODULE_NAME = "hsa_bench_kernels"

app = typer.Typer(
    name="bench",
    help="Benchmarks (need a CUDA GPU and a checkout of the repository).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def harness_path() -> Path | None:
    """``bench/bench_kernels.py`` of the checkout this package came from, else of the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / HARNESS).is_file():
            return root / HARNESS
    return None


def load_kernel_bench() -> ModuleType:
    """The benchmark harness module, loaded once from :func:`harness_path`.

    Raises:
        FileNotFoundError: not run from a checkout (the message is the one line the command prints).
    """
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    path = harness_path()
    if path is None:
        raise FileNotFoundError(
            f"hsa bench kernels runs from a checkout of hsa-toolkit: no {HARNESS} beside the installed package "
            f"({Path(__file__).resolve().parents[1]}) or in the working directory ({Path.cwd()})")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


@app.command("kernels")
@guarded
def kernels(
    shapes: str = typer.Option("4096x4,16384x2,65536x1,131072x1", "--shapes", metavar="TxB,...",
                               help="Sequence length x batch of each table row (T a multiple of 64, >= 512)."),
    out: Path = typer.Option(Path("bench/results/h200"), "--out", "-o",
                             help="Folder for results.json/.md/.png (sweep.json with --sweep); created."),
    published: Path = typer.Option(Path("third_party/hsa_pub/hsa_triton.py"), "--published", metavar="PATH",
                                   help="The published HSA Triton kernel file; absent -> its columns read '-'."),
    variants: str = typer.Option("query", "--variants",
                                 help="Extra columns of ours: block (the token-block forward; the default is "
                                 "query-outer), atomic_dq (the atomic-dQ backward); '' for none."),
    no_correctness: bool = typer.Option(False, "--no-correctness", help="Skip the bf16-vs-fp32 error check."),
    sweep: bool = typer.Option(False, "--sweep", help="Only sweep launch settings (T=64K) into sweep.json."),
    selection: str = typer.Option("uniform", "--selection", help="How the table's selections are drawn: uniform "
                                  "(each token its own; the worst case), block (shared per 64-token block) or "
                                  "recorded:FILE (a trained model's, from bench/record_selections.py)."),
) -> None:
    """Our Triton HSA kernels vs the published HSA kernel, fla's NSA and dense SDPA, on one CUDA GPU.

    Prints progress and the markdown table; writes results.json, results.md and results.png into --out.

    Missing competitors (published kernel file, fla) are left out and shown as '-'.

    Exit 3 outside a checkout, or without a CUDA GPU or Triton; same flags and files as
    python bench/bench_kernels.py.
    """
    try:
        bench = load_kernel_bench()
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_MISSING_DEP)
    try:
        shape_list = bench.parse_shapes(shapes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shapes") from None
    try:
        keep = bench.parse_variants(variants)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variants") from None
    if problem := bench.selection_problem(selection):
        raise typer.BadParameter(problem, param_hint="--selection")
    problem = bench.cuda_problem()
    if problem:
        fail(problem, EXIT_MISSING_DEP)
    command = " ".join(["hsa", *sys.argv[1:]])
    results = bench.run_benchmark(shape_list, out, published=published, variants=keep,
                                  correctness=not no_correctness, sweep=sweep, command=command, selection=selection)
    if sweep:
        typer.echo(f"wrote {out / 'sweep.json'}")
        return
    typer.echo(bench.markdown(results))
    for present, what in ((results["published_kernel"], f"published HSA kernel (not loaded from {published})"),
                          (results["fla_nsa"], "fla NSA (fla not installed or failed to import)")):
        if not present:
            typer.echo(f"note: {what}: its columns read '-'")
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'results.png'}")


app.command("model")(bench_model.model)
