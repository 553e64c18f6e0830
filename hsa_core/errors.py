"""Exceptions with messages meant for people (the CLI prints them as one line)."""

from __future__ import annotations


class HSAError(Exception):
    """Base class of the toolkit's errors (the CLI prints them as one line; see ``hsa_cli._common``)."""


class UsageError(HSAError, ValueError):
    """A bad argument, flag combination or environment variable (exit code 2)."""


class InvalidFileError(HSAError, ValueError):
    """A file the toolkit reads is corrupt, truncated or does not match what it must contain: a model
    directory (safetensors, ``config.json``), a checkpoint, a JSON record (exit code 6)."""


class DeviceUnavailableError(HSAError, RuntimeError):
    """The requested device (``cuda``) is not available on this machine (exit code 3)."""


class ResourceLimitError(HSAError, MemoryError):
    """Checked *before* allocating: the request exceeds a limit (layer count, memory) (exit code 7)."""


def truncate(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters with a marker (values echoed in messages stay short)."""
    return text if len(text) <= limit else f"{text[:limit - 15]}...[{len(text):,} chars]"


def short_repr(value: object, limit: int = 120) -> str:
    """A bounded ``repr``: never walks more than a few levels/items of a nested value, so a YAML
    alias bomb (billions of shared references) or a huge list costs nothing to describe."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    return truncate(r.repr(value), limit)


class SpecError(HSAError, ValueError):
    """An invalid layout spec. ``path`` points into the document (``layers[27].memory``).

    The message reads ``<source>: <path>: <what is wrong>; <what is allowed>``.
    """

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        # Bounded here, once for every check: paths and messages may embed keys and values of the
        # user's document, of any size.
        self.path = truncate(str(path), 200)
        self.message = truncate(str(message), 1000)
        self.source = source
        path, message = self.path, self.message
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

    def __init__(self, what: str, module: str, extra: str | None, hint: str | None = None, *,
                 package: str | None = "hsa-toolkit") -> None:
        self.what, self.module, self.extra, self.package = what, module, extra, package
        # ``package`` None: code outside any distribution (a ``--plugin`` file) has no extra to name.
        install = f"pip install '{package}[{extra}]'" if extra and package else f"pip install {module}"
        msg = f"{what} needs the optional dependency '{module}', which is not installed; install it with: {install}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


def distribution_of(module_name: str) -> str | None:
    """The installed distribution that ships the top-level package of ``module_name`` (or ``None``)."""
    from importlib import metadata

    top = module_name.split(".", 1)[0]
    try:
        dists = metadata.packages_distributions().get(top) or []
    except Exception:  # broken metadata of some unrelated distribution
        return None
    return dists[0] if dists else None


def require(module: str, *, what: str, extra: str | None, hint: str | None = None, package: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``package[extra]``.

    ``package`` defaults to the distribution of the *calling* code: a third-party plugin that calls
    ``require(..., extra="gpu")`` gets ``pip install 'its-package[gpu]'``, not the toolkit's extra.
    """
    import importlib
    import sys

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if package is None:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            package = _package_for(caller)
        raise MissingDependencyError(what, module, extra, hint, package=package) from exc


_OWN_PACKAGES = ("hsa_core", "hsa_backbones", "hsa_kernels", "hsa_cli")


def _package_for(module_name: str) -> str | None:
    """``hsa-toolkit`` for the toolkit's own modules, else the caller's distribution (``None`` when the
    caller belongs to none, e.g. a plugin file loaded with ``--plugin``)."""
    top = module_name.split(".", 1)[0]
    if not top or top in _OWN_PACKAGES or top == "__main__":
        return "hsa-toolkit"
    return distribution_of(module_name)
