"""The plugin's own tests: the Mixer contract (from hsa-toolkit) plus minLSTM-specific checks."""

from __future__ import annotations

import pytest
import torch
from hsa_minlstm import MinLSTMMixer

from hsa_core.testing import check_mixer


@pytest.mark.parametrize("options", [{}, {"expand": 1, "scan_chunk": 5}])
def test_minlstm_follows_the_mixer_contract(options: dict) -> None:
    # seq_len 23 with scan_chunk 5: segments and scan blocks cross each other's boundaries.
    check_mixer(MinLSTMMixer, d_model=16, options=options, seq_len=23)


def test_minlstm_contract_in_fp64_is_tight() -> None:
    check_mixer(MinLSTMMixer, d_model=8, dtype=torch.float64, atol=1e-12, rtol=1e-12, seq_len=40)


def test_scan_matches_the_plain_recurrence() -> None:
    """The log-space scan equals h_t = a_t h_{t-1} + b_t run token by token."""
    mixer = MinLSTMMixer(8, scan_chunk=7).double()
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    log_a, log_b = mixer._log_coefficients(x)
    h = torch.zeros(2, mixer.d_inner, dtype=torch.float64)
    hs = []
    for t in range(x.shape[1]):
        h = log_a[:, t].exp() * h + log_b[:, t].exp()
        hs.append(h)
    expected = mixer.out_proj(torch.stack(hs, dim=1))
    y, _ = mixer(x)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_long_sequence_stays_finite_and_state_is_fp32_under_bf16() -> None:
    mixer = MinLSTMMixer(8).to(torch.bfloat16)
    x = torch.randn(1, 2048, 8, dtype=torch.bfloat16)
    y, state = mixer(x, return_state=True)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert state is not None and state["h"].dtype == torch.float32


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="expand"):
        MinLSTMMixer(8, expand=0)
