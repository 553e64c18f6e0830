"""The ``hsa`` typer application: registers one command per module and maps errors to exit codes."""

from __future__ import annotations

import typer

from . import bench, build, data, demo, generate, info, listing, train, validate
from . import eval as eval_cmd

app = typer.Typer(
    name="hsa",
    help="Hierarchical Sparse Attention toolkit: compose, check and run HSA hybrids from YAML layouts.\n\n"
    "Exit codes: 0 ok, 1 invalid spec or data, 2 usage, 3 missing optional dependency (or no CUDA GPU for "
    "`hsa bench`), 4 demo self-check failed.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks are for bugs only; expected failures are one `error:` line (see _common.guarded).
    pretty_exceptions_enable=False,
)
app.command("build")(build.build)
app.command("validate")(validate.validate)
app.command("list")(listing.list_kinds)
app.command("info")(info.info)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_task)
app.command("generate")(generate.generate)
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")


def main() -> None:
    """Console-script entry point (``hsa``)."""
    app()


if __name__ == "__main__":
    main()
