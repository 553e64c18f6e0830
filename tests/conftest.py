"""Test-wide setup.

On machines without CUDA, Triton code (our kernels, fla's layers) runs under Triton's interpreter.
``TRITON_INTERPRET`` must be set before any module that defines kernels is imported, hence here, at
collection start.
"""

from __future__ import annotations

import os

import pytest
import torch
from hsa_backbones.shadowing import import_pypi_kernels

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# fla (imported by tests directly too) imports transformers, which imports the PyPI package 'kernels':
# pytest puts the checkout's root, and with it the folder kernels/, on sys.path
import_pypi_kernels()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run mamba-ssm's Triton launchers under the CPU interpreter: three CUDA-only calls inside them are
    neutralised for the test (``torch.cuda.device`` as a no-op context, the multiprocessor count, and
    the autotuner's timing, which reports zero for every candidate). Skips on CUDA machines."""
    import contextlib
    import types

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU interpreter test")
    from triton.runtime import autotuner

    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=4))
    monkeypatch.setattr(autotuner.Autotuner, "_bench", lambda self, *a, **k: [0.0, 0.0, 0.0])


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (exact comparisons and timing-free runs on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
