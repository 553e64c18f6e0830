"""Fixtures of the trainer tests: a tiny RAMba-shaped layout (one CPU thread: ``tests/app/conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture
def tiny_spec() -> dict[str, Any]:
    from hsa_core.layout import load_spec

    return load_spec(TINY)
