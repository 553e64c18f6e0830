"""Exceptions with messages meant for people (the CLI prints them as one line)."""

from __future__ import annotations


class HSAError(Exception):
    """Base class of the toolkit's errors."""


class SpecError(HSAError, ValueError):
    """An invalid layout spec. ``path`` points into the document (``layers[27].memory``).

    The message reads ``<source>: <path>: <what is wrong>; <what is allowed>``.
    """

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")

    def with_source(self, source: str) -> SpecError:
        return SpecError(self.path, self.message, source)


class RegistryError(HSAError, KeyError):
    """Unknown or duplicate registry entry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(HSAError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, what: str, module: str, extra: str | None, hint: str | None = None) -> None:
        self.what, self.module, self.extra = what, module, extra
        install = f"pip install 'hsa-toolkit[{extra}]'" if extra else f"pip install {module}"
        msg = f"{what} needs the optional dependency '{module}', which is not installed; install it with: {install}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


def require(module: str, *, what: str, extra: str | None, hint: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(what, module, extra, hint) from exc
