"""The GPU fast paths of the Mamba backbones, checked on CPU under Triton's interpreter.

On CUDA, ``Mamba2`` runs mamba-ssm's Triton kernels (chunked SSD scan, gated RMSNorm, state update)
and the causal conv through fla's Triton kernel. Here the same code runs under ``TRITON_INTERPRET=1``
(set by ``tests/conftest.py``) and is compared with the PyTorch path, forward and backward. Three
CUDA-only calls inside mamba-ssm's launchers are neutralised for the duration of each test by the
``interpreter`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
from hsa_backbones._ssm import causal_conv
from hsa_backbones.fast_paths import causal_conv_kernel, describe_paths, mamba_triton
from hsa_backbones.mamba2 import Mamba2

from tests.optional_deps import skip_unless_required

pytestmark = [pytest.mark.triton]


def _need(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        skip_unless_required(f"{module} is not installed")


def test_mamba_ssm_triton_kernels_import_without_the_compiled_extension() -> None:
    """mamba-ssm is installed by `make setup` without its CUDA extension: the Triton kernels must load
    anyway (a broken import here would silently cost 10x on GPUs)."""
    _need("mamba_ssm")
    kernels = mamba_triton()
    assert kernels is not None
    assert kernels.via in ("package", "triton-only")
    assert callable(kernels.chunk_scan) and callable(kernels.gated_rmsnorm) and callable(kernels.state_update)
    assert "mamba-ssm Triton scan" in describe_paths(cuda=True)["mamba2"] or "error" not in describe_paths(True)


def test_fla_causal_conv_kernel_is_found() -> None:
    _need("fla")
    found = causal_conv_kernel()
    assert found is not None and found[0] in ("fla", "causal-conv1d")


def _grads(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor, state_out: dict, w: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    loss = (out * w).sum() + state_out["ssm"].square().sum() * 0.1 + state_out["conv"].square().sum() * 0.1
    names = [n for n, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return dict(zip(["x", *names], grads))


@pytest.mark.slow
@pytest.mark.parametrize("rmsnorm", [pytest.param(True, id="gated-rmsnorm"), pytest.param(False, id="silu-gate")])
def test_mamba2_triton_path_matches_torch_path(interpreter: None, rmsnorm: bool) -> None:
    """forward_triton == forward (PyTorch path): outputs, carried state and every gradient, at an odd
    length (37 = 2 chunks of 16 + 5), starting from a random state."""
    _need("mamba_ssm")
    kernels = mamba_triton()
    torch.manual_seed(1)
    m = Mamba2(32, d_state=16, headdim=16, expand=2, chunk_size=16, rmsnorm=rmsnorm)
    with torch.no_grad():
        m.D.normal_()
    x = torch.randn(2, 37, 32, requires_grad=True)
    state = {"conv": torch.randn(2, m.conv_dim, m.d_conv), "ssm": torch.randn(2, m.nheads, m.headdim, m.d_state)}
    given = {k: v.clone() for k, v in state.items()}
    w = torch.randn(2, 37, 32)

    ref, ref_state = m(x, state, return_state=True)
    got, got_state = m.forward_triton(x, state, return_state=True, kernels=kernels, conv_kernel=None)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    for key in ("conv", "ssm"):
        torch.testing.assert_close(got_state[key], ref_state[key], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(state[key], given[key], rtol=0, atol=0)  # not modified in place
    g_ref = _grads(m, x, ref, ref_state, w)
    got, got_state = m.forward_triton(x, state, return_state=True, kernels=kernels, conv_kernel=None)
    g_got = _grads(m, x, got, got_state, w)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_got[name], g, rtol=2e-3, atol=2e-3, msg=lambda s, n=name: f"d{n}: {s}")


@pytest.mark.slow
def test_mamba2_triton_step_matches_torch_step(interpreter: None) -> None:
    _need("mamba_ssm")
    kernels = mamba_triton()
    m = Mamba2(32, d_state=16, headdim=16, expand=2, chunk_size=16)
    x = torch.randn(3, 32)
    state = {"conv": torch.randn(3, m.conv_dim, m.d_conv), "ssm": torch.randn(3, m.nheads, m.headdim, m.d_state)}
    given = {k: v.clone() for k, v in state.items()}
    ref, ref_state = m.step(x, state)
    from hsa_backbones._ssm import causal_conv_step

    z0, x0, z, xbc, dt = m._split(m.in_proj(x))
    xbc, conv_state = causal_conv_step(xbc, state["conv"], m.conv1d.weight, m.conv1d.bias)
    xs, B, C = torch.split(xbc, [m.d_ssm, m.d_state, m.d_state], dim=-1)
    got, got_state = m.step_triton(x, state, kernels, (z0, x0, z, xs, B, C, dt), conv_state)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_state["ssm"], ref_state["ssm"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state["ssm"], given["ssm"], rtol=0, atol=0)


@pytest.mark.slow
def test_fla_causal_conv_matches_torch_conv(interpreter: None) -> None:
    """fla's Triton conv as the Mamba conv: output, final state, and gradients (incl. the initial state)."""
    _need("fla")
    from hsa_backbones.fla_adapters import import_fla_layers

    import_fla_layers("the fla conv test")  # prepares the interpreter for fla's kernels
    kernel = causal_conv_kernel()
    assert kernel is not None and kernel[0] == "fla"
    conv = torch.nn.Conv1d(24, 24, 4, groups=24, padding=3)
    x = torch.randn(2, 21, 24, requires_grad=True)
    state0 = torch.randn(2, 24, 4, requires_grad=True)
    w = torch.randn(2, 21, 24)
    outs = {}
    for name, k in (("torch", None), ("fla", kernel)):
        y, st = causal_conv(x, state0, conv.weight, conv.bias, kernel=k)
        # The oldest of the W carried inputs is never read again (a width-W conv needs W - 1 past inputs),
        # and fla's backward rightly gives it no gradient: the loss uses the W - 1 that matter.
        grads = torch.autograd.grad((y * w).sum() + st[..., 1:].sum(), [x, state0, conv.weight, conv.bias],
                                    allow_unused=True)
        outs[name] = (y, st, grads)
    torch.testing.assert_close(outs["fla"][0], outs["torch"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["fla"][1], outs["torch"][1], rtol=0, atol=0)
    for a, b in zip(outs["fla"][2][:1] + outs["fla"][2][2:], outs["torch"][2][:1] + outs["torch"][2][2:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
