"""Mamba2: the Mixer contract, an independent token-by-token reference, and mamba-ssm compatibility."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hsa_backbones._ssm import ssd_scan
from hsa_backbones.mamba2 import MAMBA2_DEFAULTS, Mamba2, build_mamba2
from torch import Tensor

from hsa_core.testing import check_mixer

CONFIGS: list[dict[str, Any]] = [
    {"d_state": 16, "headdim": 16, "chunk_size": 4},
    {"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 5, "D_has_hdim": True, "norm_before_gate": True},
    {"d_state": 8, "headdim": 16, "d_ssm": 32, "rmsnorm": False, "dt_limit": [0.0, 0.05], "bias": True},
]


@pytest.mark.parametrize("options", CONFIGS, ids=["basic", "groups-hdimD-normfirst", "dssm-nonorm-dtlimit"])
def test_contract(options: dict[str, Any]) -> None:
    check_mixer(build_mamba2, d_model=32, options=options, seq_len=13)


def mamba2_recurrence(m: Mamba2, x: Tensor) -> Tensor:
    """Mamba2 written from the equations, one token at a time, from ``m``'s parameters.

    x ``(B, T, d_model)`` -> ``(B, T, d_model)``. Deliberately shares no code with the module.
    """
    b, t, _ = x.shape
    h_, p_, n_, g_ = m.nheads, m.headdim, m.d_state, m.ngroups
    zxbcdt = F.linear(x, m.in_proj.weight, m.in_proj.bias)
    d_mlp = m.d_inner - m.d_ssm
    z0, x0, z, xbc, dt = torch.split(zxbcdt, [d_mlp, d_mlp, m.d_ssm, m.d_ssm + 2 * g_ * n_, h_], dim=-1)
    w = m.conv1d.weight[:, 0, :]  # (channels, width)
    width = w.shape[1]
    xpad = torch.cat([xbc.new_zeros(b, width - 1, xbc.shape[-1]), xbc], dim=1)
    conv = torch.stack([(xpad[:, i:i + width] * w.T).sum(1) for i in range(t)], dim=1)
    conv = F.silu(conv + (m.conv1d.bias if m.conv1d.bias is not None else 0))
    xs, Bm, Cm = torch.split(conv, [m.d_ssm, g_ * n_, g_ * n_], dim=-1)
    A = -torch.exp(m.A_log)
    D = m.D.view(h_, p_) if m.D_has_hdim else m.D[:, None]
    group_of_head = torch.arange(h_) // (h_ // g_)
    state = x.new_zeros(b, h_, p_, n_)
    ys = []
    for i in range(t):
        d = F.softplus(dt[:, i] + m.dt_bias)  # (b, h)
        if m.dt_limit is not None:
            d = d.clamp(*m.dt_limit)
        xt = xs[:, i].view(b, h_, p_)
        Bt = Bm[:, i].view(b, g_, n_)[:, group_of_head]  # (b, h, n)
        Ct = Cm[:, i].view(b, g_, n_)[:, group_of_head]
        state = torch.exp(d * A)[..., None, None] * state + (d[..., None] * xt)[..., None] * Bt[:, :, None, :]
        ys.append((state * Ct[:, :, None, :]).sum(-1) + D * xt)
    y = torch.stack(ys, dim=1).reshape(b, t, m.d_ssm)
    if m.rmsnorm:
        gate = F.silu(z)
        pre = y if m.norm_before_gate else y * gate
        grp = pre.view(b, t, g_, -1)
        normed = (grp / torch.sqrt(grp.pow(2).mean(-1, keepdim=True) + 1e-5)).view(b, t, -1) * m.norm.weight
        y = normed * gate if m.norm_before_gate else normed
    else:
        y = y * F.silu(z)
    if d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("options", CONFIGS, ids=["basic", "groups-hdimD-normfirst", "dssm-nonorm-dtlimit"])
def test_matches_token_recurrence(options: dict[str, Any], double: None) -> None:
    m = Mamba2(24 if options.get("d_ssm") is None else 32, **options)
    x = torch.randn(2, 11, m.d_model)
    with torch.no_grad():
        y, _ = m(x)
        torch.testing.assert_close(y, mamba2_recurrence(m, x), atol=1e-10, rtol=1e-9)


def test_chunk_size_does_not_change_the_result(double: None) -> None:
    x = torch.randn(2, 23, 16)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=1)
    outputs = []
    with torch.no_grad():
        for chunk in (1, 3, 8, 23, 64):
            m.chunk_size = chunk
            outputs.append(m(x, return_state=True))
    for y, state in outputs[1:]:
        torch.testing.assert_close(y, outputs[0][0])
        torch.testing.assert_close(state["ssm"], outputs[0][1]["ssm"])


def test_ssd_scan_matches_mamba_ssm_ssd_minimal(mamba_ssm_ref: Any) -> None:
    """Our chunked scan with an initial state == mamba-ssm's ``ssd_minimal_discrete`` (float64)."""
    g = torch.Generator().manual_seed(1)
    b, t, h, p, n = 2, 24, 3, 4, 5
    x = torch.randn(b, t, h, p, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, t, h, generator=g, dtype=torch.float64))
    A = -torch.rand(h, generator=g, dtype=torch.float64) * 3
    B = torch.randn(b, t, h, n, generator=g, dtype=torch.float64)
    C = torch.randn(b, t, h, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=5, initial_state=h0)
    y_ref, final_ref = mamba_ssm_ref.ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, 8,
                                                          initial_states=h0[:, None])
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(final, final_ref)


def _ref_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k != "dt_limit"}
    if options.get("dt_limit") is not None:
        kwargs["dt_limit"] = tuple(options["dt_limit"])
    return kwargs


@pytest.mark.parametrize("options", CONFIGS, ids=["basic", "groups-hdimD-normfirst", "dssm-nonorm-dtlimit"])
def test_mamba_ssm_checkpoint_loads_and_gives_the_same_outputs(options: dict[str, Any], mamba_ssm_ref: Any) -> None:
    torch.manual_seed(0)
    ref = mamba_ssm_ref.Mamba2(32, use_mem_eff_path=False, **_ref_kwargs(options))
    ours = Mamba2(32, **options)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x), atol=2e-5, rtol=1e-4)


def test_default_size_matches_mamba_ssm_and_the_spec(mamba_ssm_ref: Any) -> None:
    """At d_model=1024 with the layout defaults: same parameters as mamba-ssm, ~6.60M per block (spec)."""
    with torch.device("meta"):
        ref = mamba_ssm_ref.Mamba2(1024)
        ours = build_mamba2(1024, **MAMBA2_DEFAULTS)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert abs(n - 6.60e6) < 0.01e6


def test_state_layout_and_decoding_match_mamba_ssm_inference(mamba_ssm_ref: Any) -> None:
    """Prefill states equal mamba-ssm's inference cache; its ``step`` and ours then agree token by token."""
    torch.manual_seed(0)
    ref = mamba_ssm_ref.Mamba2(32, d_state=16, headdim=16, chunk_size=4, use_mem_eff_path=False, layer_idx=0)
    ours = Mamba2(32, d_state=16, headdim=16, chunk_size=4)
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


def test_bf16_runs_and_keeps_an_fp32_state() -> None:
    m = Mamba2(32, d_state=8, headdim=16).to(torch.bfloat16)
    x = torch.randn(2, 7, 32, dtype=torch.bfloat16)
    y, state = m(x, return_state=True)
    assert y.dtype == torch.bfloat16 and state["ssm"].dtype == torch.float32
    assert state["conv"].dtype == torch.bfloat16
    y.float().sum().backward()
