"""What every command shares: exit codes, one-line errors, spec sources, ``--plugin`` loading."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console

from hsa_core.errors import MissingDependencyError, RegistryError, SpecError

EXIT_OK = 0
EXIT_SPEC = 1  # invalid spec (or an unknown name in it)
EXIT_USAGE = 2  # typer/click's own code for bad arguments
EXIT_MISSING_DEP = 3  # an optional dependency is not installed
EXIT_CHECK_FAILED = 4  # a self-check (hsa demo) found a mismatch


def console() -> Console:
    """A rich console on stdout (tables). Errors go to stderr as plain lines (:func:`fail`).

    Made per call, not at import: rich reads the terminal width (``COLUMNS``) when a console is
    created, and the CLI may be imported long before it prints (tests, ``python -m``).
    """
    return Console(highlight=False)


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: <message>`` as exactly one line on stderr and exit with ``code``."""
    # Plain echo rather than rich: rich would wrap long messages over several lines.
    one_line = re.sub(r"\s*\n\s*", "; ", str(message).strip())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


def _find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` among ``exc`` and its causes/contexts.

    A missing dependency may surface wrapped (e.g. a factory re-raising it as a build error); the
    exit code must still say 3.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def guarded(fn: F) -> F:
    """Decorator mapping the toolkit's exceptions to one-line errors and exit codes.

    ``SpecError`` and ``RegistryError`` -> 1, ``MissingDependencyError`` -> 3 (also when wrapped in
    another exception). Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except Exception as exc:
            missing = _find_in_chain(exc, MissingDependencyError)
            if missing is not None:
                fail(str(missing), EXIT_MISSING_DEP)
            if isinstance(exc, RegistryError):
                fail(str(exc), EXIT_SPEC)
            spec_error = _find_in_chain(exc, SpecError)
            if spec_error is not None:
                fail(str(spec_error), EXIT_SPEC)
            raise

    return wrapper  # type: ignore[return-value]


def resolve_source(spec: str) -> Path:
    """``SPEC`` argument -> YAML file: an existing path, else a preset name (``ramba-370m``).

    Raises:
        typer.BadParameter: neither (exit 2, with the list of presets).
    """
    from hsa_core import presets

    path = Path(spec)
    if path.is_file():
        return path
    try:
        return presets.path(spec)
    except KeyError:
        hint = "" if spec.endswith((".yaml", ".yml", ".json")) else " or preset"
        raise typer.BadParameter(
            f"{spec!r} is not a file{hint}; presets: {', '.join(presets.names())}", param_hint="SPEC"
        ) from None


def load_plugins(paths: list[Path] | None) -> None:
    """Register plugin files named with ``--plugin`` (explicit: never scanned from a folder)."""
    from hsa_core.plugins import get_host

    host = get_host()
    for path in paths or []:
        # In-process callers (tests, notebooks) may pass the same file again: loading it twice
        # would register its kinds twice, which the registry rightly refuses.
        if host.pm.get_plugin(f"path:{path}") is not None:
            continue
        try:
            host.load_path(path)
        except RegistryError as exc:  # file missing or registered twice
            raise typer.BadParameter(str(exc), param_hint="--plugin") from None


def load_spec_from(spec: str, overrides: list[str] | None) -> tuple[Path, dict[str, Any]]:
    """Resolve ``SPEC`` and load it into the canonical dict (raises :class:`SpecError` with the file)."""
    from hsa_core.layout import load_spec

    path = resolve_source(spec)
    try:
        return path, load_spec(path, overrides=list(overrides or []))
    except SpecError as exc:
        if exc.source:
            raise
        raise exc.with_source(str(path)) from None


def build_model(canonical: dict[str, Any], *, device: str, source: Path) -> Any:
    """``HSALanguageModel.from_spec`` with constructor errors reported as spec errors (exit 1).

    The layout checks types, names and wiring; a backbone's own constraints between its options
    (e.g. mamba2's ``expand * d_model`` must be a multiple of ``headdim``) are only checked by its
    constructor, as ``ValueError``/``TypeError``. Those are still mistakes in the spec, so they get
    the one-line treatment instead of a traceback.
    """
    from hsa_core.model import HSALanguageModel

    try:
        return HSALanguageModel.from_spec(canonical, device=device)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, (SpecError, MissingDependencyError)):
            raise
        raise SpecError("", f"building the model failed: {type(exc).__name__}: {exc}", str(source)) from exc


# Options shared by several commands (typer reads these defaults as option declarations).
SET_OPTION = typer.Option(
    None, "--set", "-s", metavar="KEY=VALUE",
    help="Override a spec value by dotted path, e.g. model.d_model=256 or memories.mid.chunk_size=32 (repeatable).",
)
PLUGIN_OPTION = typer.Option(
    None, "--plugin", "-p", metavar="PATH",
    help="Load a plugin from this Python file before resolving the spec (repeatable).",
)
