"""Error handling shared by the real-text commands (``hsa data``, ``hsa generate``, ``hsa eval ppl``,
``--data``/``--filler text:``): a :class:`~hsa_app.data.DataError` becomes one ``error:`` line and its
exit code (1 bad data, 2 usage)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ._common import fail

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turn a ``DataError`` raised inside the block into ``error: <message>`` and its exit code."""
    from hsa_app.data.errors import DataError

    try:
        yield
    except DataError as exc:
        fail(str(exc), exc.exit_code)


def data_guarded(fn: F) -> F:
    """Decorator form of :func:`data_errors` (put it inside ``@guarded``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with data_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
