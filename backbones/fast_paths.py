"""The GPU fast paths of the Mamba and sliding-window backbones: which kernels are used, and how they
are loaded.

mamba-ssm ships two kinds of kernels: a compiled CUDA extension (``selective_scan_cuda``, Mamba1's
selective scan) and pure-Triton kernels (Mamba2's chunked SSD scan, the gated RMSNorm, the one-token
state update). Its package ``__init__`` imports the compiled extension, so on a machine where that
extension was not built (a CPU-built sdist, or any GPU machine without a CUDA toolchain at install
time) ``import mamba_ssm.ops.triton.ssd_combined`` fails although nothing it needs is missing.
:func:`mamba_triton` therefore imports the Triton modules *without running the package
``__init__``* when, and only when, the normal import fails for that reason: it registers a bare
package object for ``mamba_ssm`` (same ``__path__``), so that ``mamba_ssm.ops.triton.*`` import
normally. Nothing is stubbed, and the compiled extension is never touched.

The causal depthwise convolution comes from, in order: causal-conv1d's compiled kernel, fla's Triton
``causal_conv1d`` (fla is the ``fla`` extra), cuDNN through ``F.conv1d``.

Sliding-window attention (``swa``) runs fla's Triton ``parallel_attn`` with ``window_size`` when fla is
installed (:func:`sliding_window_kernel`): it skips the key blocks outside each query block's window,
where SDPA with a window mask computes every (query, key) score of the segment and materialises the
mask. ``HSA_SWA_PATH=torch`` forces SDPA.

Rules (a fast path must never disappear silently on CUDA):

* a package that is not installed is a normal "not available" (the PyTorch path runs; ``hsa info``
  says so and names what to install);
* a package that *is* installed but whose kernels fail to import raises :class:`HSAError` on first
  use, naming the package and the error; ``HSA_MAMBA_PATH=torch`` forces the PyTorch path instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

from hsa_core.errors import HSAError

from .autotune_memory import describe as describe_autotune_memory
from .autotune_memory import set_up_autotuning
from .launch_tables import describe_launch_table
from .shadowing import import_pypi_kernels

__all__ = ["MambaTriton", "causal_conv_kernel", "describe_paths", "forced_torch", "mamba_triton",
           "selective_scan_kernel", "sliding_window_kernel", "swa_forced_torch"]

ENV_PATH = "HSA_MAMBA_PATH"  # "auto" (default) or "torch"
ENV_SWA_PATH = "HSA_SWA_PATH"  # "auto" (default: fla's kernel when installed) or "torch" (SDPA)


@dataclass(frozen=True)
class MambaTriton:
    """mamba-ssm's Triton entry points used by :class:`hsa_backbones.mamba2.Mamba2` on CUDA."""

    chunk_scan: Callable  # mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined
    gated_rmsnorm: Callable  # mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn
    state_update: Callable  # mamba_ssm.ops.triton.selective_state_update.selective_state_update
    via: str  # "package" (normal import) or "triton-only" (package __init__ skipped)


def forced_torch() -> bool:
    """``HSA_MAMBA_PATH=torch``: use the PyTorch paths even on CUDA."""
    value = os.environ.get(ENV_PATH, "auto").strip().lower()
    if value not in ("auto", "torch"):
        raise HSAError(f"{ENV_PATH}={value!r} is not allowed; use 'auto' (fast kernels when installed) or 'torch'")
    return value == "torch"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_TRITON_MODULES = ("ssd_combined", "layernorm_gated", "selective_state_update")


def _import_triton_modules() -> list[types.ModuleType]:
    return [importlib.import_module(f"mamba_ssm.ops.triton.{m}") for m in _TRITON_MODULES]


def _bare_package(name: str) -> None:
    """Register ``name`` as a package object whose ``__init__`` was not run (same search path)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations is not None
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = name
    sys.modules[name] = pkg


@functools.lru_cache(maxsize=1)
def mamba_triton() -> MambaTriton | None:
    """mamba-ssm's Triton kernels, or ``None`` when mamba-ssm is not installed.

    Works without CUDA too (importing Triton kernels needs no GPU); the model only calls them on
    CUDA tensors, and the tests call them under Triton's interpreter.

    Raises:
        HSAError: mamba-ssm is installed but its Triton kernels cannot be imported.
    """
    if not _installed("mamba_ssm"):
        return None
    via = "package"
    try:
        mods = _import_triton_modules()
    except ImportError as first:
        # The usual cause: the package __init__ imports the compiled extension that was not built.
        # Python removed the half-initialised package from sys.modules; import the Triton modules
        # under a bare package object instead.
        if "mamba_ssm" in sys.modules:  # an earlier, successful import: the failure is elsewhere
            raise HSAError(f"mamba-ssm is installed but its Triton kernels fail to import: {first}; "
                           f"set {ENV_PATH}=torch to use the PyTorch path") from first
        via = "triton-only"
        try:
            _bare_package("mamba_ssm")
            mods = _import_triton_modules()
        except Exception as exc:
            sys.modules.pop("mamba_ssm", None)
            raise HSAError(f"mamba-ssm is installed but its Triton kernels fail to import ({type(exc).__name__}: "
                           f"{exc}); set {ENV_PATH}=torch to use the PyTorch path") from exc
    ssd, norm, update = mods
    if _cuda():
        set_up_autotuning("mamba_ssm")  # measured winners, and no timing again in later processes
    return MambaTriton(ssd.mamba_chunk_scan_combined, norm.rmsnorm_fn, update.selective_state_update, via)


@functools.lru_cache(maxsize=1)
def selective_scan_kernel() -> Callable | None:
    """Mamba1's compiled selective scan (``selective_scan_fn``), or ``None`` when it was not built."""
    if not _installed("mamba_ssm"):
        return None
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn
    except ImportError:
        return None  # compiled extension not built: an install without CUDA build, not a bug


@functools.lru_cache(maxsize=1)
def causal_conv_kernel() -> tuple[str, Callable] | None:
    """The fastest installed causal depthwise conv kernel: ``("causal-conv1d", fn)``, ``("fla", fn)`` or None.

    ``causal-conv1d``'s ``causal_conv1d_fn(x (B, C, T), weight (C, W), bias, activation)``;
    fla's ``causal_conv1d(x (B, T, C), weight (C, W), bias, initial_state=(B, C, W), output_final_state,
    activation)``.
    """
    if _installed("causal_conv1d"):
        try:
            return "causal-conv1d", importlib.import_module("causal_conv1d").causal_conv1d_fn
        except ImportError:
            pass  # installed without its compiled kernels (the CPU install): try the next
    if _installed("fla"):
        import_pypi_kernels()  # fla imports transformers, which imports it
        try:
            fn = importlib.import_module("fla.modules.causal_conv1d").causal_conv1d
            if _cuda():
                set_up_autotuning("fla")
            return "fla", fn
        except ImportError as exc:
            raise HSAError(f"fla is installed but its causal_conv1d fails to import: {exc}") from exc
    return None


def swa_forced_torch() -> bool:
    """``HSA_SWA_PATH=torch``: sliding-window attention through SDPA even where fla's kernel is installed."""
    from hsa_core.envvars import env_choice

    return env_choice(ENV_SWA_PATH, ("auto", "torch"), "auto") == "torch"


@functools.lru_cache(maxsize=1)
def sliding_window_kernel() -> Callable | None:
    """fla's ``parallel_attn(q (B, T, HQ, D), k, v (B, T, H, D), window_size=W) -> (B, T, HQ, D)``, or None
    when fla is not installed. Works without CUDA too (under Triton's interpreter, as the tests run it).

    Raises:
        HSAError: fla is installed but its attention kernel cannot be imported.
    """
    if not _installed("fla"):
        return None
    try:
        return importlib.import_module("fla.ops.attn.parallel").parallel_attn
    except ImportError as exc:
        raise HSAError(f"fla is installed but its parallel_attn fails to import: {exc}; set {ENV_SWA_PATH}=torch "
                       "to use SDPA") from exc


def _describe_swa() -> str:
    if swa_forced_torch():
        return f"SDPA with a window mask ({ENV_SWA_PATH}=torch)"
    try:
        kernel = sliding_window_kernel()
    except HSAError as exc:
        return f"error: {exc}"
    return ("fla parallel_attn (window blocks only; bf16/fp16)" if kernel
            else "SDPA with a window mask (install fla for the windowed kernel)")


def describe_paths(cuda: bool) -> dict[str, str]:
    """Which path each Mamba backbone and ``swa`` take on this machine (``hsa info``)."""
    if not cuda:
        return {"mamba": "torch (CPU)", "mamba2": "torch (CPU)", "swa": "SDPA with a window mask (CPU)"}
    if forced_torch():
        return {"mamba": f"torch ({ENV_PATH}=torch)", "mamba2": f"torch ({ENV_PATH}=torch)", "swa": _describe_swa()}
    conv = causal_conv_kernel()
    conv_name = conv[0] if conv else "cuDNN conv1d (install fla or causal-conv1d for a Triton/CUDA conv)"
    try:
        tri = mamba_triton()
    except HSAError as exc:
        tri, m2 = None, f"error: {exc}"
    else:
        m2 = (f"mamba-ssm Triton scan ({tri.via}) + {conv_name}" if tri
              else "torch SSD scan (install mamba-ssm for the Triton scan)")
    scan = selective_scan_kernel()
    m1 = ("mamba-ssm compiled selective scan" if scan
          else "torch selective scan (mamba-ssm's CUDA extension not built)")
    return {"mamba": m1, "mamba2": m2, "swa": _describe_swa(),
            "mamba-ssm / fla launch settings": describe_launch_table(),
            "mamba-ssm / fla autotuning decisions": describe_autotune_memory()}
