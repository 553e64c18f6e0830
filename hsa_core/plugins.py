"""Plugin manager and the typed registries it fills.

Registries record which plugin registered each kind (provenance, shown by ``hsa list``), refuse
duplicates, and answer an unknown name with the closest known ones. The library fills two: backbones
and retrieval layers. An application adds registries of its own, filled by hooks it declares
(:meth:`PluginHost.extension`; the tasks of :mod:`hsa_app.tasks`).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .errors import RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class KindInfo:
    """A registered kind: a backbone, a retrieval layer, or a kind of an application's registry (a task).

    Attributes:
        name: the name layouts and commands use (``mamba2``, ``hsa``, ``passkey``...).
        factory: backbones ``factory(d_model, **options) -> Mixer``; retrieval layers
            ``factory(d_model, *, kv_heads, head_dim, chunk_size, **options)``; tasks ``factory(**options)``.
        description: one line for ``hsa list``.
        requires: import names of optional dependencies (``hsa list`` reports whether they are installed).
        extra: the ``pip install hsa-toolkit[extra]`` that brings them.
        defaults: the options a user may set, with their defaults (anything else is rejected).
    """

    name: str
    factory: Any
    description: str = ""
    requires: tuple[str, ...] = ()
    extra: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


# Names kept for readability at the call sites: every registry holds the same kind of entry.
BackboneInfo = RetrievalLayerInfo = KindInfo


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registry entry and the plugin it came from."""

    info: T
    plugin: str


class Registry(Generic[T]):
    """Name -> info, with provenance, duplicate rejection and did-you-mean errors."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, info: T, plugin: str) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"{self.what} name {name!r} from plugin '{plugin}' is not a valid identifier")
        if name in self._entries:
            other = self._entries[name].plugin
            raise RegistryError(
                f"{self.what} '{name}' is registered twice: by plugin '{other}' and by plugin '{plugin}'"
            )
        self._entries[name] = Entry(info, plugin)

    def get(self, name: str) -> T:
        return self.entry(name).info

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.what} {name!r}{hint} (known: {', '.join(known) or 'none'})"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, Entry[T]]]:
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        return sorted(self._entries)


class PluginHost:
    """One pluggy manager plus the registries the hooks fill."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backbones: Registry[BackboneInfo] = Registry("backbone")
        self.retrieval_layers: Registry[RetrievalLayerInfo] = Registry("retrieval layer")
        self._extensions: dict[str, Registry[KindInfo]] = {}  # hook name -> registry of an application
        self.broken: dict[str, str] = {}  # entry-point plugins that failed to import -> why
        self._filled = False

    # -- loading -------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load every plugin of the entry-point group ``hsa`` from installed distributions.

        A plugin that fails to import (a broken install, a missing dependency at import time) is
        skipped with one warning line on stderr: the other plugins, and every command that does not
        need its kinds, keep working; a layout that uses its kinds then names it as not installed.
        """
        import sys
        from importlib import metadata

        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                print(f"warning: plugin '{ep.name}' could not be loaded ({self.broken[ep.name]}); its kinds are "
                      "unavailable", file=sys.stderr)
                continue
            self.pm.register(plugin, name=ep.name)
            self._filled = False

    def register_plugin(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module (tests and library users)."""
        registered = self.pm.register(plugin, name=name)
        self._filled = False
        assert registered is not None, f"plugin {name!r} was blocked or registered twice"
        return registered

    def load_path(self, path: str | Path) -> str:
        """Load a plugin from a Python file the user names explicitly (``--plugin path.py``)."""
        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"plugin file '{path}' does not exist")
        spec = importlib.util.spec_from_file_location(f"hsa_plugin_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return self.register_plugin(module, name=f"path:{path}")

    # -- filling the registries ----------------------------------------------------------------
    def _fill(self) -> None:
        if self._filled:
            return
        self.backbones = Registry("backbone")
        self.retrieval_layers = Registry("retrieval layer")
        self._extensions = {hook: Registry(reg.what) for hook, reg in self._extensions.items()}
        hooks = self.pm.hook
        for hook, registry in ((hooks.hsa_register_backbones, self.backbones),
                               (hooks.hsa_register_retrieval_layers, self.retrieval_layers),
                               *((getattr(hooks, name), reg) for name, reg in self._extensions.items())):
            for impl in hook.get_hookimpls():
                impl.function(register=_registrar(registry, impl.plugin_name))
        self._filled = True

    def extension(self, specs: ModuleType, hook: str, what: str) -> Registry[KindInfo]:
        """The registry of an application's hook ``hook`` (declared in its hookspec module ``specs``).

        The first call adds ``specs`` to this plugin manager (plugins registered before then are checked
        against it, so entry-point plugins loaded earlier keep working); every implementation of the
        hook then registers its kinds as for the library's hooks: ``register(name, factory, *,
        description="", requires=(), extra=None, defaults=None)``. ``what`` names a kind in errors.
        """
        if hook not in self._extensions:
            if getattr(getattr(self.pm.hook, hook, None), "spec", None) is None:
                self.pm.add_hookspecs(specs)
            self._extensions[hook] = Registry(what)
            self._filled = False
        self._fill()
        return self._extensions[hook]

    def backbone_registry(self) -> Registry[BackboneInfo]:
        self._fill()
        return self.backbones

    def retrieval_registry(self) -> Registry[RetrievalLayerInfo]:
        self._fill()
        return self.retrieval_layers


def _registrar(registry: Registry[KindInfo], plugin: str) -> Callable[..., None]:
    """The ``register`` callable handed to one plugin's hook implementation."""

    def register(name: str, factory: Any, *, description: str = "", requires: tuple[str, ...] = (),
                 extra: str | None = None, defaults: dict[str, Any] | None = None) -> None:
        registry.add(name, KindInfo(name, factory, description, tuple(requires), extra, dict(defaults or {})), plugin)

    return register


def plugin_package(plugin: str) -> str | None:
    """The distribution (``pip install`` name) that installed entry-point plugin ``plugin``, if any."""
    from importlib import metadata

    try:
        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            if ep.name == plugin and ep.dist is not None:
                return ep.dist.name
    except Exception:  # broken metadata of an unrelated distribution: no hint rather than a crash
        return None
    return None


def install_hint(plugin: str, extra: str | None, requires: tuple[str, ...]) -> str:
    """How to install what a kind of ``plugin`` needs: ``pip install '<its package>[extra]'``.

    The extra belongs to the plugin's own package: the toolkit's extras only for the built-in plugins.
    """
    package = plugin_package(plugin)
    if extra and package:
        return f"pip install '{package}[{extra}]'"
    return f"pip install {' '.join(requires)}" if requires else "(nothing to install)"


def is_available(requires: tuple[str, ...]) -> bool:
    """Whether every module in ``requires`` can be found (without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in requires)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, with installed entry points loaded on first use."""
    global _HOST
    if _HOST is None:
        host = PluginHost()
        host.load_entry_points()
        _HOST = host
    return _HOST


def reset_host() -> None:
    """Forget the process-wide host (tests)."""
    global _HOST
    _HOST = None


def backbones() -> Registry[BackboneInfo]:
    """Registry of backbone kinds from all plugins."""
    return get_host().backbone_registry()


def retrieval_layers() -> Registry[RetrievalLayerInfo]:
    """Registry of retrieval-layer kinds from all plugins."""
    return get_host().retrieval_registry()
