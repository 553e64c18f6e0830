"""Test shim that makes mamba-ssm's own module classes runnable on a CPU machine.

``import mamba_ssm`` needs the compiled CUDA extension ``selective_scan_cuda``, and its modules call
CUDA/Triton kernels. For parameter-compatibility and numerics tests we only need its *module classes*
(parameter names, shapes, initialisation, the surrounding math) with the kernels swapped for
mamba-ssm's own pure-PyTorch references:

* ``selective_scan_cuda`` is stubbed in ``sys.modules`` so that the package imports;
* ``Mamba``'s ``selective_scan_fn`` -> ``selective_scan_ref`` (same file, pure PyTorch);
* ``Mamba2``'s ``mamba_chunk_scan_combined`` -> a wrapper around ``ssd_minimal_discrete`` (the SSD
  paper's listing, shipped in ``mamba_ssm/modules/ssd_minimal.py``);
* the gated RMSNorm's Triton forward -> ``rms_norm_ref``; ``selective_state_update`` -> ``None`` so that
  ``step`` takes mamba-ssm's PyTorch branch.

Everything is undone after the module's tests (the stub and every ``mamba_ssm`` module leave
``sys.modules``), so other tests still see a CPU machine where ``import mamba_ssm`` fails.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from tests.optional_deps import skip_unless_required


def _chunk_scan_via_minimal(ssd_minimal_discrete):  # type: ignore[no-untyped-def]
    """``mamba_chunk_scan_combined``'s signature on top of ``ssd_minimal_discrete``."""

    def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                   seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                   return_final_states=False, return_varlen_states=False):
        assert seq_idx is None and cu_seqlens is None
        t, h = x.shape[1], x.shape[2]
        dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        if dt_softplus:
            dt = F.softplus(dt)
        dt = dt.clamp(*dt_limit)
        Bh = B.float().repeat_interleave(h // B.shape[2], dim=2)
        Ch = C.float().repeat_interleave(h // C.shape[2], dim=2)
        X, Adt = x.float() * dt.unsqueeze(-1), A.float() * dt
        pad = (-t) % chunk_size
        if pad:  # zero input and zero decay on padding: outputs and final state unchanged
            X, Bh, Ch = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (X, Bh, Ch))
            Adt = F.pad(Adt, (0, 0, 0, pad))
        init = None if initial_states is None else initial_states.float().unsqueeze(1)
        y, final = ssd_minimal_discrete(X, Adt, Bh, Ch, chunk_size, initial_states=init)
        y = y[:, :t]
        if D is not None:
            y = y + x.float() * (D.float() if D.dim() == 2 else D.float()[:, None])
        if z is not None:
            y = y * F.silu(z.float())
        return (y, final) if return_final_states else y

    return chunk_scan


@pytest.fixture(scope="module")
def mamba_ssm_ref() -> Iterator[types.SimpleNamespace]:
    """mamba-ssm's ``Mamba``, ``Mamba2`` and ``InferenceParams`` runnable on CPU (see the module docstring)."""
    if importlib.util.find_spec("mamba_ssm") is None:
        skip_unless_required("mamba-ssm is not installed (pip install 'hsa-toolkit[mamba]', see README)")
    before = set(sys.modules)
    stubbed = "selective_scan_cuda" not in sys.modules
    if stubbed:
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    mp = pytest.MonkeyPatch()
    try:
        import mamba_ssm.modules.mamba2 as m2
        import mamba_ssm.modules.mamba_simple as m1
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        from mamba_ssm.ops.triton import layernorm_gated
        from mamba_ssm.utils.generation import InferenceParams

        def norm_forward(self, x, z=None):  # type: ignore[no-untyped-def]
            return layernorm_gated.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps,
                                                group_size=self.group_size, norm_before_gate=self.norm_before_gate)

        mp.setattr(m1, "selective_scan_fn", selective_scan_ref)
        mp.setattr(m1, "selective_state_update", None)
        mp.setattr(m1, "causal_conv1d_fn", None)
        mp.setattr(m1, "causal_conv1d_update", None)
        mp.setattr(m2, "mamba_chunk_scan_combined", _chunk_scan_via_minimal(ssd_minimal_discrete))
        mp.setattr(m2, "selective_state_update", None)
        mp.setattr(m2, "causal_conv1d_fn", None)
        mp.setattr(m2, "causal_conv1d_update", None)
        mp.setattr(layernorm_gated.RMSNorm, "forward", norm_forward)
        yield types.SimpleNamespace(Mamba=m1.Mamba, Mamba2=m2.Mamba2, InferenceParams=InferenceParams,
                                    ssd_minimal_discrete=ssd_minimal_discrete)
    finally:
        mp.undo()
        for name in set(sys.modules) - before:
            if name.startswith(("mamba_ssm", "selective_scan_cuda")):
                del sys.modules[name]
        if stubbed:
            sys.modules.pop("selective_scan_cuda", None)


@pytest.fixture
def double() -> Iterator[None]:
    """Run a test with float64 as the default dtype (tight comparisons against references)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
