"""Mamba (Mamba1): the Mixer contract, an independent token-by-token reference, mamba-ssm compatibility."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hsa_backbones._ssm import selective_scan
from hsa_backbones.mamba import MAMBA_DEFAULTS, Mamba, build_mamba
from torch import Tensor

from hsa_core.testing import check_mixer

CONFIGS: list[dict[str, Any]] = [
    {},
    {"d_state": 4, "dt_rank": 3, "d_conv": 2, "dt_init": "constant", "bias": True, "conv_bias": False},
]
IDS = ["defaults", "small-state-bias"]


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
def test_contract(options: dict[str, Any]) -> None:
    check_mixer(build_mamba, d_model=32, options=options, seq_len=13)


def mamba_recurrence(m: Mamba, x: Tensor) -> Tensor:
    """Mamba1 from the equations, one token at a time, from ``m``'s parameters (no shared code)."""
    b, t, _ = x.shape
    xs, z = F.linear(x, m.in_proj.weight, m.in_proj.bias).chunk(2, dim=-1)
    w = m.conv1d.weight[:, 0, :]
    width = w.shape[1]
    xpad = torch.cat([xs.new_zeros(b, width - 1, xs.shape[-1]), xs], dim=1)
    A = -torch.exp(m.A_log)  # (d, n)
    h = x.new_zeros(b, m.d_inner, m.d_state)
    ys = []
    for i in range(t):
        u = (xpad[:, i:i + width] * w.T).sum(1)
        u = F.silu(u + (m.conv1d.bias if m.conv1d.bias is not None else 0))
        proj = u @ m.x_proj.weight.T
        dt_low, Bt, Ct = proj.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(dt_low @ m.dt_proj.weight.T + m.dt_proj.bias)  # (b, d)
        h = torch.exp(dt[..., None] * A) * h + (dt * u)[..., None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + m.D * u
        ys.append(y * F.silu(z[:, i]))
    return F.linear(torch.stack(ys, dim=1), m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
def test_matches_token_recurrence(options: dict[str, Any], double: None) -> None:
    m = Mamba(24, **options)
    x = torch.randn(2, 11, 24)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], mamba_recurrence(m, x), atol=1e-10, rtol=1e-9)


def test_scan_initial_state_is_exact_by_linearity(double: None) -> None:
    """The identity the CUDA path uses to add a carried state: scan(h0) = scan(0) + C . (prod exp(dt A)) h0."""
    g = torch.Generator().manual_seed(0)
    b, t, d, n = 2, 9, 5, 3
    u, B, C = torch.randn(b, t, d, generator=g), torch.randn(b, t, n, generator=g), torch.randn(b, t, n, generator=g)
    dt = F.softplus(torch.randn(b, t, d, generator=g))
    A = -torch.rand(d, n, generator=g) * 2
    h0 = torch.randn(b, d, n, generator=g)
    y, h = selective_scan(u, dt, A, B, C, initial_state=h0)
    y0, h_zero = selective_scan(u, dt, A, B, C)
    decay = torch.exp(torch.cumsum(dt, dim=1).unsqueeze(-1) * A)
    torch.testing.assert_close(y, y0 + torch.einsum("btdn,bdn,btn->btd", decay, h0, C))
    torch.testing.assert_close(h, h_zero + decay[:, -1] * h0)


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
def test_mamba_ssm_checkpoint_loads_and_gives_the_same_outputs(options: dict[str, Any], mamba_ssm_ref: Any) -> None:
    torch.manual_seed(0)
    ref = mamba_ssm_ref.Mamba(32, use_fast_path=False, **options)
    ours = Mamba(32, **options)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x), atol=2e-5, rtol=1e-4)


def test_default_size_matches_mamba_ssm(mamba_ssm_ref: Any) -> None:
    with torch.device("meta"):
        ref = mamba_ssm_ref.Mamba(768)
        ours = build_mamba(768, **MAMBA_DEFAULTS)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_state_layout_and_decoding_match_mamba_ssm_inference(mamba_ssm_ref: Any) -> None:
    torch.manual_seed(0)
    ref = mamba_ssm_ref.Mamba(32, use_fast_path=False, layer_idx=0)
    ours = Mamba(32)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 32)
    params = mamba_ssm_ref.InferenceParams(max_seqlen=16, max_batch_size=2)
    with torch.no_grad():
        y_ref = ref(x[:, :6], inference_params=params)
        y, state = ours(x[:, :6], return_state=True)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
        conv_ref, ssm_ref = params.key_value_memory_dict[0]
        torch.testing.assert_close(state["conv"], conv_ref)
        torch.testing.assert_close(state["ssm"], ssm_ref, atol=2e-5, rtol=1e-4)
        for i in range(6, 9):
            params.seqlen_offset = i
            y_ref = ref(x[:, i:i + 1], inference_params=params)
            y_t, state = ours.step(x[:, i], state)
            torch.testing.assert_close(y_t, y_ref[:, 0], atol=2e-5, rtol=1e-4)
