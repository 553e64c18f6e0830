"""``hsa_core.ops.dispatch``: which backend runs, and a broken kernel import is an error, not a fallback."""

from __future__ import annotations

import hsa_kernels
import pytest

from hsa_core.errors import MissingDependencyError, UsageError
from hsa_core.ops import KERNEL_OPS, backend_for


def _broken(op: str):
    raise ImportError(f"cannot import name 'x' from hsa_kernels ({op})")


def test_kernel_ops_are_the_kernel_packages() -> None:
    assert KERNEL_OPS == hsa_kernels.OPS == ("hsa_attention", "hsa_decode", "hsa_select", "host_gather")
    with pytest.raises(ValueError, match="no Triton kernel for op 'hsa_nope'; known: hsa_attention"):
        hsa_kernels.triton_entry("hsa_nope")


@pytest.mark.parametrize("op", KERNEL_OPS)
def test_broken_kernel_import_raises_where_a_kernel_would_run(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSA_BACKEND", raising=False)
    monkeypatch.setattr(hsa_kernels, "triton_available", lambda: True)
    monkeypatch.setattr(hsa_kernels, "triton_entry", _broken)
    with pytest.raises(ImportError, match="cannot import name"):
        backend_for(op, "cuda")
    assert backend_for(op, "cpu") == "torch"  # no kernel would run there: the reference, nothing imported
    monkeypatch.setenv("HSA_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # forced onto the CPU, the kernel runs in the interpreter
    with pytest.raises(ImportError, match="cannot import name"):
        backend_for(op, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # and without it cannot run there at all (a GPU machine's default)
    with pytest.raises(UsageError, match="Triton kernels need CUDA"):
        backend_for(op, "cpu")
    monkeypatch.setenv("HSA_BACKEND", "torch")
    assert backend_for(op, "cuda") == "torch"


def test_without_triton_auto_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSA_BACKEND", raising=False)
    monkeypatch.setattr(hsa_kernels, "triton_available", lambda: False)
    monkeypatch.setattr(hsa_kernels, "triton_entry", _broken)  # never reached
    assert backend_for("hsa_attention", "cuda") == "torch"
    monkeypatch.setenv("HSA_BACKEND", "triton")
    with pytest.raises(MissingDependencyError, match=r"HSA_BACKEND=triton.*hsa-toolkit\[triton\]"):
        backend_for("hsa_attention", "cuda")


def test_bad_backend_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSA_BACKEND", "cuda")
    with pytest.raises(ValueError, match="HSA_BACKEND='cuda' is not one of auto, torch, triton"):
        backend_for("hsa_select", "cpu")


@pytest.mark.slow
def test_the_naive_references_import_without_triton() -> None:
    """Each op folder's naive.py and hsa_kernels itself import nothing of Triton (a CPU install without it)."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"  # any `import triton` now raises ImportError
            "import hsa_core.ops, hsa_kernels.hsa_attention, hsa_kernels.hsa_select, hsa_kernels.hsa_decode\n"
            "import hsa_kernels.host_gather\n"
            "import torch; q = torch.randn(1, 4, 2, 8)\n"
            "print(hsa_core.ops.hsa_select(q, torch.randn(1, 1, 2, 8), topk=1, chunk_size=2)[0].shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HSA_BACKEND": "auto"})  # PYTHONPATH kept: the GPU machine needs it
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.Size([1, 4, 2, 1])"
