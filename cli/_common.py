"""What every command shares: exit codes, one-line errors, spec sources, ``--plugin`` loading."""

from __future__ import annotations

import functools
import os
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
EXIT_USAGE = 2  # bad arguments, flags or environment variables (typer/click's own code for bad arguments)
EXIT_MISSING_DEP = 3  # an optional dependency is not installed, or no CUDA GPU where one is asked for
EXIT_CHECK_FAILED = 4  # a self-check (hsa demo) found a mismatch
EXIT_FILE = 5  # the OS refused to read or write a file (permission, not a directory, disk full, ...)
EXIT_INVALID_FILE = 6  # a model directory, checkpoint or record is corrupt, truncated or inconsistent
EXIT_RESOURCES = 7  # out of memory, or a request checked against a limit before allocating
EXIT_INTERNAL = 70  # an unexpected exception: a bug (one line; HSA_DEBUG=1 shows the traceback)
EXIT_INTERRUPTED = 130  # Ctrl-C

#: Longest message printed; exception texts can embed huge values.
MAX_MESSAGE = 1000


def console() -> Console:
    """A rich console on stdout (tables). Errors go to stderr as plain lines (:func:`fail`).

    Made per call, not at import: rich reads the terminal width (``COLUMNS``) when a console is
    created, and the CLI may be imported long before it prints (tests, ``python -m``).
    """
    return Console(highlight=False)


F = TypeVar("F", bound=Callable[..., Any])


def one_line(message: object) -> str:
    """``message`` as one line of at most :data:`MAX_MESSAGE` characters."""
    from hsa_core.errors import truncate

    # Every character str.splitlines() breaks at (\r, \v, \x1c, \u2028, ...), not only \n: a key
    # written by the user may hold any of them.
    parts = [part.strip() for part in str(message).splitlines()]
    text = "; ".join(part for part in parts if part)
    return truncate(re.sub(r"[\x00-\x08\x0e-\x1f\x7f]", "?", text), MAX_MESSAGE)


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: <message>`` as exactly one line on stderr and exit with ``code``."""
    # Plain echo rather than rich: rich would wrap long messages over several lines.
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def _find_in_chain(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
                   ) -> BaseException | None:
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
        # ``raise X from None`` means "X replaces what was being handled": do not look behind it.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")
_NO_CUDA_MARKERS = ("torch not compiled with cuda", "no cuda gpus are available", "found no nvidia driver",
                    "cuda driver initialization failed", "no cuda-capable device")


def _os_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}{other}: {what}" if where else what


def classify(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of an exception that reached a command's boundary.

    The order matters: the toolkit's own errors first (also when wrapped in another exception),
    then what libraries and the OS raise for bad files, devices and memory, and last anything else,
    which is a bug (:data:`EXIT_INTERNAL`).
    """
    import json

    from hsa_core.errors import (
        DeviceUnavailableError,
        HSAError,
        InvalidFileError,
        ResourceLimitError,
        UsageError,
    )

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    missing = _find_in_chain(exc, MissingDependencyError)  # also when wrapped (a factory's build error)
    if missing is not None:
        return str(missing), EXIT_MISSING_DEP
    own = ((DeviceUnavailableError, EXIT_MISSING_DEP), (SpecError, EXIT_SPEC), (RegistryError, EXIT_SPEC),
           (UsageError, EXIT_USAGE), (InvalidFileError, EXIT_INVALID_FILE), (ResourceLimitError, EXIT_RESOURCES))
    for kind, code in own:  # the exception itself first: its class says what happened
        if isinstance(exc, kind):
            return str(exc), code
    for kind, code in own:  # then a toolkit error it wraps
        found = _find_in_chain(exc, kind)
        if found is not None:
            return str(found), code
    text = str(exc)
    lowered = text.lower()
    oom = _find_in_chain(exc, MemoryError)
    if oom is not None or (isinstance(exc, RuntimeError) and any(m in lowered for m in _OOM_MARKERS)):
        detail = str(oom or exc) or type(oom or exc).__name__
        return (f"out of memory ({detail}); use a smaller model, batch (--batch-size, --batch-tokens) or "
                f"sequence, or another device"), EXIT_RESOURCES
    if isinstance(exc, RuntimeError | AssertionError) and any(m in lowered for m in _NO_CUDA_MARKERS):
        return f"CUDA is not available on this machine ({text}); use --device cpu", EXIT_MISSING_DEP
    own_module = (getattr(exc, "name", None) or "").split(".")[0] in ("hsa_core", "hsa_kernels", "hsa_backbones",
                                                                      "hsa_cli")
    if isinstance(exc, ImportError) and not own_module:  # the toolkit's own modules are installed: a bug
        name = getattr(exc, "name", None)
        return (f"a required module is not installed: {text}" + (f"; install it with: pip install {name}"
                                                                  if name else "")), EXIT_MISSING_DEP
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text: {exc}", EXIT_INVALID_FILE
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc}", EXIT_INVALID_FILE
    if type(exc).__name__ == "SafetensorError":
        return f"invalid safetensors file: {exc}", EXIT_INVALID_FILE
    if isinstance(exc, OSError):
        return _os_message(exc), EXIT_FILE
    if isinstance(exc, HSAError):
        return text, EXIT_USAGE
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
    return (f"internal error{where}: {type(exc).__name__}: {text} (a bug in hsa-toolkit or a plugin; "
            f"HSA_DEBUG=1 shows the traceback)"), EXIT_INTERNAL


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """typer's and click's own exits and usage errors (typer vendors a copy of click)."""
    found: list[type[BaseException]] = [typer.Exit, typer.Abort, click.exceptions.ClickException,
                                        click.exceptions.Exit, click.exceptions.Abort]
    found += [k for k in typer.BadParameter.__mro__ if k.__name__ == "ClickException"]
    return tuple(found)


_PASS_THROUGH = _click_exception_types()


def guarded(fn: F) -> F:
    """Decorator: the error boundary of every command.

    Every exception becomes one ``error:`` line and a documented exit code (:func:`classify`; the
    table is in the README). ``HSA_DEBUG=1`` re-raises unexpected exceptions with their traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            message, code = classify(exc)
            if code == EXIT_INTERNAL and os.environ.get("HSA_DEBUG", "") not in ("", "0"):
                raise
            fail(message, code)

    return wrapper  # type: ignore[return-value]


def check_writable(directory: Path, *, option: str = "--out") -> None:
    """Create ``directory`` if needed and prove a file can be written there, before long work.

    Raises:
        OSError: with the path (exit code 5 at the boundary), e.g. permission denied, a parent is a file.
    """
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".hsa-write-test-"):
            pass
    except OSError as exc:
        exc.strerror = f"{option} is not writable: {exc.strerror or exc}"
        if exc.filename is None:
            exc.filename = str(directory)
        raise


def check_parent_writable(target: Path, *, option: str = "--out") -> None:
    """The directory that will hold ``target`` (created later, e.g. by an atomic rename) is writable."""
    check_writable(target.parent if str(target.parent) else Path("."), option=option)


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
        except MissingDependencyError:
            raise
        except Exception as exc:  # the file itself fails: a syntax error, an import it lacks...
            from hsa_core.errors import UsageError

            raise UsageError(f"--plugin {path}: the file could not be loaded: {type(exc).__name__}: {exc}") from None


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
    the one-line treatment instead of a traceback. On a real device the model is first built on
    ``meta`` (free) and its size checked against the free memory (:func:`hsa_core.limits.check_fits`),
    so an oversized layout is refused before anything is allocated.
    """
    from hsa_core.limits import check_fits
    from hsa_core.model import HSALanguageModel

    def make(target: str) -> Any:
        try:
            return HSALanguageModel.from_spec(canonical, device=target)
        except (ValueError, TypeError, ArithmeticError) as exc:
            if isinstance(exc, (SpecError, MissingDependencyError)):
                raise
            raise SpecError("", f"building the model failed: {type(exc).__name__}: {exc}", str(source)) from exc
        except RuntimeError as exc:  # e.g. a tensor size overflow on meta: still the spec's doing
            if target != "meta":
                raise
            raise SpecError("", f"building the model failed: {type(exc).__name__}: {exc}", str(source)) from exc

    meta = make("meta")
    if device == "meta":
        return meta
    check_fits(meta, device, what=f"model '{canonical.get('name')}'")
    del meta
    return make(device)


# Options shared by several commands (typer reads these defaults as option declarations).
SET_OPTION = typer.Option(
    None, "--set", "-s", metavar="KEY=VALUE",
    help="Override a spec value by dotted path, e.g. model.d_model=256 or memories.mid.chunk_size=32 (repeatable).",
)
PLUGIN_OPTION = typer.Option(
    None, "--plugin", "-p", metavar="PATH",
    help="Load a plugin from this Python file before resolving the spec (repeatable).",
)
