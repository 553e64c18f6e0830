"""Environment variables that choose among a few named behaviours (``HSA_BACKEND``,
``HSA_OFFLOAD_GATHER``, ``HSA_OFFLOAD_LANDMARKS``): read, normalised, and refused with a usage error
when misspelt."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import UsageError, truncate

__all__ = ["env_choice"]


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    """The value of environment variable ``name`` (stripped, lower-cased; unset or empty: ``default``).

    Raises:
        UsageError: a value outside ``choices`` (exit code 2 in the CLI), naming the variable, the value
            and the choices.
    """
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise UsageError(f"environment variable {name}={truncate(repr(value), 40)} is not one of {', '.join(choices)}")
    return value
