"""Synthetic long-context tasks in token space: offline, deterministic from a seed.

Built-ins (registered through :mod:`hsa_app.tasks.plugin`): ``passkey`` (the paper's protocol),
``mqar`` (multi-query associative recall), ``niah`` and ``niah_multikey`` (needle retrieval), and
``variable_tracking``. A plugin adds its own with the ``hsa_register_tasks`` hook (declared by the
application, :mod:`hsa_app.hookspecs`, on the library's plugin manager: :func:`registry`); its factory takes
the options (including ``vocab_size``) and returns an object with :class:`Task`'s interface:
``sample(batch_size, seq_len, seed, depth=None) -> TaskBatch``, ``num_answers``, ``min_length()``,
``options``.

Example::

    from hsa_app.tasks import make_task
    task = make_task("passkey", vocab_size=512, key_len=4, min_gap=32)
    batch = task.sample(8, 512, seed=0, depth=0.5)   # batch.input_ids (8, 512)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    BOS,
    IGNORE_INDEX,
    KEY,
    NUM_SPECIAL,
    QUERY,
    Task,
    TaskBatch,
    as_generator,
)

if TYPE_CHECKING:
    from hsa_core.plugins import KindInfo, PluginHost, Registry

__all__ = [
    "BOS", "IGNORE_INDEX", "KEY", "NUM_SPECIAL", "QUERY", "Task", "TaskBatch", "as_generator", "make_task",
    "parse_task_options", "registry", "task_names",
]


def registry(host: PluginHost | None = None) -> Registry[KindInfo]:
    """Registry of task kinds from all plugins (of ``host``, default the process-wide plugin host).

    The first call adds the application's hookspecs (:mod:`hsa_app.hookspecs`) to the host's plugin
    manager; the built-in tasks come from the entry point ``hsa_builtin_tasks`` like any plugin's.
    """
    from hsa_core.plugins import get_host

    from .. import hookspecs

    return (host or get_host()).extension(hookspecs, "hsa_register_tasks", "task")


def task_names() -> list[str]:
    """Names of every registered task (built-ins and plugins)."""
    return registry().names()


def make_task(name: str, **options: Any) -> Task:
    """Build a registered task by name (unknown name: :class:`~hsa_core.errors.RegistryError` with
    did-you-mean; unknown option: ``ValueError`` naming the allowed ones)."""
    info = registry().get(name)
    unknown = set(options) - set(info.defaults)
    if unknown and info.defaults:
        raise ValueError(f"task '{name}': unknown option(s) {', '.join(sorted(unknown))} "
                         f"(allowed: {', '.join(sorted(info.defaults))})")
    return info.factory(**{**info.defaults, **options})


def parse_task_options(items: list[str] | None) -> dict[str, Any]:
    """``["key_len=5", "filler=random"]`` -> ``{"key_len": 5, "filler": "random"}`` (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"task option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
