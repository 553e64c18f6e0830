"""Fixtures of the trainer tests: a tiny RAMba-shaped layout and one CPU thread per process.

One thread: the CI runs test files in parallel on two cores, and PyTorch's OpenMP threads spinning
against each other make small models several times slower than a single thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_spec() -> dict[str, Any]:
    from hsa_core.layout import load_spec

    return load_spec(TINY)
