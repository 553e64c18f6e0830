"""Synthetic long-context tasks in token space: offline, deterministic from a seed.

Built-ins (registered through :mod:`hsa_core.tasks.plugin`): ``passkey`` (the paper's protocol),
``mqar`` (multi-query associative recall), ``niah`` and ``niah_multikey`` (needle retrieval), and
``variable_tracking``. A plugin adds its own with the ``hsa_register_tasks`` hook; its factory takes
the options (including ``vocab_size``) and returns an object with :class:`Task`'s interface:
``sample(batch_size, seq_len, seed, depth=None) -> TaskBatch``, ``num_answers``, ``min_length()``,
``options``.

Example::

    from hsa_core.tasks import make_task
    task = make_task("passkey", vocab_size=512, key_len=4, min_gap=32)
    batch = task.sample(8, 512, seed=0, depth=0.5)   # batch.input_ids (8, 512)
"""

from __future__ import annotations

from typing import Any

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

__all__ = [
    "BOS", "IGNORE_INDEX", "KEY", "NUM_SPECIAL", "QUERY", "Task", "TaskBatch", "as_generator", "make_task",
    "parse_task_options", "task_names",
]


def task_names() -> list[str]:
    """Names of every registered task (built-ins and plugins)."""
    from ..plugins import tasks

    return tasks().names()


def make_task(name: str, **options: Any) -> Task:
    """Build a registered task by name (unknown name: :class:`~hsa_core.errors.RegistryError` with
    did-you-mean; unknown option: ``ValueError`` naming the allowed ones)."""
    from ..plugins import tasks

    info = tasks().get(name)
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
