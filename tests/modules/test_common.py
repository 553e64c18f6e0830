"""Shared building blocks: RMSNorm under mixed dtypes, SwiGLU width."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hsa_core.modules.common import RMSNorm, SwiGLU, swiglu_hidden


def test_rmsnorm_matches_torch_in_fp32_and_keeps_its_state_dict() -> None:
    ours, ref = RMSNorm(24, eps=1e-6), nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(24))
    ref.load_state_dict(ours.state_dict())  # same keys
    x = torch.randn(3, 5, 24)
    assert torch.equal(ours(x), ref(x))


def test_rmsnorm_with_bf16_input_and_fp32_weight_takes_the_fused_path_without_warning() -> None:
    norm = RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(32) + 0.5)
    x = torch.randn(4, 7, 32).to(torch.bfloat16).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns "Mismatch dtype ... Cannot dispatch to fused implementation"
        y = norm(x)
    assert y.dtype == torch.bfloat16
    ref = nn.functional.rms_norm(x.detach().float(), (32,), norm.weight.detach(), 1e-6)
    assert torch.allclose(y.float(), ref, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.dtype == torch.float32
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_swiglu_shapes() -> None:
    assert swiglu_hidden(96) == 256
    mlp = SwiGLU(96, swiglu_hidden(96))
    assert mlp(torch.randn(2, 3, 96)).shape == (2, 3, 96)


def test_swiglu_width_rounding() -> None:
    assert swiglu_hidden(1024) == 2752  # toolkit default: 8/3 d rounded up to a multiple of 64
    assert swiglu_hidden(1024, rounding="down") == 2688  # the published encoder: floor(8/3 d / 64) * 64
    assert swiglu_hidden(96, rounding="down") == 256
    with pytest.raises(ValueError, match="rounding"):
        swiglu_hidden(64, rounding="near")
