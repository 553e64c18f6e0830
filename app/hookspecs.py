"""Hook specifications of the application (pluggy, project ``hsa``, the library's plugin manager).

The application adds its hooks to the plugin manager of :mod:`hsa_core.plugins` when its task
registry is first used (:func:`hsa_app.tasks.registry`): plugins implement them with the library's
marker (``@hsa_core.hookimpl``) and are found through the same entry-point group ``hsa``, so a
third-party plugin does not depend on which package declares the hook.

Example (a third-party package)::

    import hsa_core

    @hsa_core.hookimpl
    def hsa_register_tasks(register):
        register("my_task", MyTask, description="my long-context task", defaults={"vocab_size": 512})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from hsa_core.hookspecs import PROJECT

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def hsa_register_tasks(register: Callable[..., Any]) -> None:
    """Register synthetic long-context tasks (``hsa train --task NAME``, ``hsa eval NAME``).

    Call ``register(name, factory, *, description="", defaults=None)``. ``factory(**options)`` returns
    a task object as described in :mod:`hsa_app.tasks` (deterministic samples from a seed, no
    downloads); ``defaults`` are the options a user may set, with their default values.
    """
