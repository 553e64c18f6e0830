"""``attention`` and ``swa``: the Mixer contract, an independent per-query reference, KV-cache sizes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hsa_backbones.attention import ATTENTION_DEFAULTS, SWA_DEFAULTS, CausalAttention, build_attention, build_swa
from torch import Tensor

from hsa_core.testing import check_mixer

CASES: list[tuple[Any, dict[str, Any]]] = [
    (build_attention, {"num_heads": 4}),
    (build_attention, {"num_heads": 4, "num_kv_heads": 2, "qk_norm": True, "rope_theta": 500.0}),
    (build_swa, {"num_heads": 4, "window": 5}),
    (build_swa, {"num_heads": 2, "num_kv_heads": 1, "window": 1, "bias": True}),
    (build_swa, {"num_heads": 2, "window": 40, "head_dim": 8}),
]
IDS = ["mha", "gqa-qknorm", "swa5", "swa1-mqa-bias", "swa-longer-than-seq"]


@pytest.mark.parametrize(("factory", "options"), CASES, ids=IDS)
def test_contract(factory: Any, options: dict[str, Any]) -> None:
    check_mixer(factory, d_model=32, options=options, seq_len=13)


def _rope_complex(x: Tensor, pos: int, theta: float) -> Tensor:
    """RoPE written with complex numbers: pairs (i, i + D/2) rotate by ``pos * theta^(-i / (D/2))``."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones(half, dtype=torch.float64), pos * freqs)
    return torch.cat([z.real, z.imag], dim=-1)


def attention_reference(m: CausalAttention, x: Tensor) -> Tensor:
    """Loop over batch, heads and queries; softmax over the visible keys only."""
    b, t, _ = x.shape
    hd, h, hkv = m.head_dim, m.num_heads, m.num_kv_heads

    def rms(v: Tensor, norm: Any) -> Tensor:
        return v if norm is None else v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight

    q = rms(m.q_proj(x).view(b, t, h, hd), m.q_norm)
    k = rms(m.k_proj(x).view(b, t, hkv, hd), m.k_norm)
    v = m.v_proj(x).view(b, t, hkv, hd)
    out = torch.zeros(b, t, h, hd, dtype=x.dtype)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // hkv)
            keys = torch.stack([_rope_complex(k[bi, s, kv], s, m.rope_theta) for s in range(t)])
            for ti in range(t):
                first = 0 if m.window is None else max(0, ti - m.window + 1)
                qi = _rope_complex(q[bi, ti, hi], ti, m.rope_theta)
                scores = keys[first:ti + 1] @ qi / hd ** 0.5
                out[bi, ti, hi] = torch.softmax(scores, dim=0) @ v[bi, first:ti + 1, kv]
    return m.o_proj(out.reshape(b, t, h * hd))


@pytest.mark.parametrize(("factory", "options"), CASES, ids=IDS)
def test_matches_per_query_reference(factory: Any, options: dict[str, Any], double: None) -> None:
    m = factory(32, **options)
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], attention_reference(m, x))


def test_swa_with_a_window_covering_the_sequence_is_full_attention() -> None:
    torch.manual_seed(0)
    full = build_attention(32, num_heads=4)
    swa = build_swa(32, num_heads=4, window=16)
    swa.load_state_dict(full.state_dict())
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(swa(x)[0], full(x)[0])


def test_kv_cache_sizes_and_positions() -> None:
    swa = build_swa(32, num_heads=4, num_kv_heads=2, window=6)
    full = build_attention(32, num_heads=4, num_kv_heads=2)
    x = torch.randn(3, 10, 32)
    _, s_swa = swa(x, return_state=True)
    _, s_full = full(x, return_state=True)
    assert s_swa["k"].shape == (3, 5, 2, 8) and s_full["k"].shape == (3, 10, 2, 8)
    assert s_swa["pos"].tolist() == [10, 10, 10] == s_full["pos"].tolist()
    # swa: fixed-size state; attention: grows linearly with the context.
    assert swa.state_size(3, 10) == swa.state_size(3, 10_000) == 2 * 3 * 5 * 2 * 8 + 3
    assert full.state_size(2, 100) == 2 * 2 * 100 * 2 * 8 + 2
    assert full.state_size(1, 0) == sum(t.numel() for t in full.init_state(1).values())


def test_defaults_are_the_factory_options() -> None:
    assert isinstance(build_attention(64, **ATTENTION_DEFAULTS), CausalAttention)
    assert build_swa(64, **SWA_DEFAULTS).window == SWA_DEFAULTS["window"]
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        build_attention(64, num_heads=4, num_kv_heads=3)


def test_cache_cast_to_another_dtype_still_continues() -> None:
    """A model cache cast wholesale (``ModelCache.to(torch.float64)``) turns ``pos`` into floats."""
    m = build_swa(32, num_heads=4, window=4)
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        y_full, _ = m(x)
        _, state = m(x[:, :5], return_state=True)
        state = {k: v.to(torch.float64) for k, v in state.items()}
        y, state = m(x[:, 5:], {k: v.float() if k != "pos" else v for k, v in state.items()})
    torch.testing.assert_close(y, y_full[:, 5:])
    assert state["pos"].dtype == torch.long and state["pos"].tolist() == [9]


def _expected_kernel_calls(cuts: list[tuple[int, int]], past: int) -> list[int]:
    """The query counts of the kernel calls a prefill in segments ``cuts`` makes: every segment of >= 2
    tokens, behind one zero query per cached slot that holds a token (``past`` slots, the older ones empty
    until ``past`` tokens were seen)."""
    seen, calls = 0, []
    for a, b in cuts:
        if b - a >= 2:
            calls.append(b - a + min(seen, past))
        seen += b - a
    return calls


def _counting_window_kernel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """fla's windowed kernel on this CPU (Triton's interpreter, fp32), counting its calls; skips without fla."""
    import hsa_backbones.attention as attention_module
    from hsa_backbones.fast_paths import sliding_window_kernel

    kernel = sliding_window_kernel()
    if kernel is None:
        from tests.optional_deps import skip_unless_required

        skip_unless_required("fla is not installed")
    if not torch.cuda.is_available():
        from hsa_backbones.fla_adapters import import_fla_layers

        import_fla_layers("the swa kernel test")  # fla's kernels prepared for the interpreter
    calls: list[int] = []

    def counted(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
        calls.append(q.shape[1])
        return kernel(q, k, v, **kw)

    monkeypatch.setattr(attention_module, "sliding_window_kernel", lambda: counted)
    monkeypatch.setattr(attention_module, "_kernel_runs_on", lambda q: True)
    return calls


@pytest.mark.parametrize("options", [
    pytest.param({"num_heads": 4, "num_kv_heads": 2, "window": 5, "qk_norm": True}, id="gqa-window5"),
    pytest.param({"num_heads": 2, "num_kv_heads": 1, "window": 1}, id="mqa-window1"),
    pytest.param({"num_heads": 2, "window": 40}, id="window-longer-than-the-segments"),
])
def test_windowed_kernel_equals_sdpa_full_pass_and_segments(options: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """fla's windowed kernel (the swa path on CUDA) against SDPA with the window mask, fp32 under the
    interpreter: the full pass with its gradients, and a prefill in segments, where the kernel runs
    behind one zero query per cached token (the cache's empty slots cut off) and a one-token step takes
    SDPA."""
    torch.manual_seed(3)
    m = build_swa(32, **options)
    x = torch.randn(2, 45, 32, requires_grad=True)
    cuts = [(0, 3), (3, 20), (20, 21), (21, 45)]  # a one-token step takes SDPA
    monkeypatch.setenv("HSA_SWA_PATH", "torch")
    y_ref, _ = m(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *m.parameters()])
    with torch.no_grad():
        seg_ref, state = [], None
        for a, b in cuts:
            y, state = m(x[:, a:b], state, return_state=True)
            seg_ref.append(y)
    monkeypatch.delenv("HSA_SWA_PATH")
    calls = _counting_window_kernel(monkeypatch)
    y, _ = m(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
    assert calls == [45]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
    calls.clear()
    with torch.no_grad():
        state_kernel = None
        for (a, b), want in zip(cuts, seg_ref, strict=True):
            got, state_kernel = m(x[:, a:b], state_kernel, return_state=True)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert calls == _expected_kernel_calls(cuts, past=m.window - 1)
    for key in ("k", "v", "pos"):
        torch.testing.assert_close(state_kernel[key], state[key])


def test_windowed_kernel_ran_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which calls take the kernel: window 5 (4 cached slots) over segments of 3, 17, 1 and 24 tokens; a
    batch whose rows have seen 3 and 2 tokens (different empty slots) takes SDPA, with the same result."""
    m = build_swa(32, num_heads=2, window=5)
    x = torch.randn(1, 45, 32)
    calls = _counting_window_kernel(monkeypatch)
    with torch.no_grad():
        state = None
        for a, b in [(0, 3), (3, 20), (20, 21), (21, 45)]:
            _, state = m(x[:, a:b], state, return_state=True)
    # 3 tokens, no cache yet: the kernel; 17 after 3 seen: 3 zero queries (the empty slot cut off) + 17;
    # 1 token: SDPA; 24 after 21 seen: 4 zero queries + 24
    assert calls == [3, 20, 28]
    with torch.no_grad():
        _, s3 = m(x[:, :3], return_state=True)
        _, s2 = m(x[:, 5:7], return_state=True)
        ragged = {key: torch.cat([s3[key], s2[key]]) for key in s3}
        calls.clear()
        y = m(torch.cat([x[:, 3:20], x[:, 7:24]]), ragged)[0]
        assert calls == []
        torch.testing.assert_close(y[:1], m(x[:, 3:20], s3)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y[1:], m(x[:, 7:24], s2)[0], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("HSA_SWA_PATH", "torch")
    calls.clear()
    with torch.no_grad():
        m(x)
    assert calls == []
    monkeypatch.setenv("HSA_SWA_PATH", "fla")
    from hsa_core.errors import UsageError

    with pytest.raises(UsageError, match="HSA_SWA_PATH='fla' is not one of auto, torch"):
        m(x)
