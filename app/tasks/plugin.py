"""Built-in tasks, registered through the same ``hsa_register_tasks`` hook as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hsa_core.hookspecs import hookimpl


@hookimpl
def hsa_register_tasks(register: Callable[..., Any]) -> None:
    from .needle import MultiKeyNeedleTask, NeedleTask
    from .passkey import PasskeyTask
    from .recall import AssociativeRecallTask
    from .variable_tracking import VariableTrackingTask

    for cls in (PasskeyTask, AssociativeRecallTask, NeedleTask, MultiKeyNeedleTask, VariableTrackingTask):
        register(cls.name, cls, description=cls.description, defaults=cls.all_defaults())
