"""The ``hsa`` typer application: registers one command per module and maps errors to exit codes."""

from __future__ import annotations

import typer

from . import bench, build, convert, data, demo, generate, info, listing, train, validate
from . import eval as eval_cmd

app = typer.Typer(
    name="hsa",
    help="Hierarchical Sparse Attention toolkit: compose, check and run HSA hybrids from YAML layouts.\n\n"
    "Exit codes: 0 ok, 1 invalid spec or data, 2 usage, 3 missing optional dependency or no CUDA GPU, "
    "4 self-check failed (hsa demo, hsa convert), 5 a file cannot be read or written, 6 corrupt or inconsistent "
    "model/checkpoint file, 7 out of memory or over a limit, 70 internal error (a bug), 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks are for bugs only; expected failures are one `error:` line (see _common.guarded).
    pretty_exceptions_enable=False,
)
def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("hsa-toolkit")
        except metadata.PackageNotFoundError:  # running from a source tree without an install
            version = "unknown (not installed)"
        typer.echo(f"hsa-toolkit {version}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the hsa-toolkit version and exit."),
) -> None:
    """Hierarchical Sparse Attention toolkit: compose, check and run HSA hybrids from YAML layouts."""


app.command("build")(build.build)
app.command("validate")(validate.validate)
app.command("list")(listing.list_kinds)
app.command("info")(info.info)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_task)
app.command("convert")(convert.convert)
app.command("generate")(generate.generate)
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")


def main() -> None:
    """Console-script entry point (``hsa``)."""
    app()


if __name__ == "__main__":
    main()
