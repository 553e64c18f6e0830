"""The built-in backbones on CUDA: the Mixer contract on the GPU paths, and mamba-ssm's kernels
(when importable) against our PyTorch scan. Skipped without CUDA."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hsa_backbones._ssm import ssd_scan
from hsa_backbones.attention import build_attention, build_swa
from hsa_backbones.fast_paths import describe_paths, mamba_triton
from hsa_backbones.mamba import build_mamba
from hsa_backbones.mamba2 import build_mamba2
from torch import Tensor

from hsa_core.testing import check_mixer
from tests.optional_deps import skip_unless_required

pytestmark = pytest.mark.gpu

CASES: list[tuple[Any, dict[str, Any]]] = [
    (build_mamba, {"d_state": 8}),
    (build_mamba2, {"d_state": 16, "headdim": 16, "chunk_size": 8}),
    (build_mamba2, {"d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 16}),
    (build_attention, {"num_heads": 4, "num_kv_heads": 2}),
    (build_swa, {"num_heads": 4, "window": 7, "qk_norm": True}),
]
IDS = ["mamba", "mamba2", "mamba2-groups", "attention-gqa", "swa"]


@pytest.mark.parametrize(("factory", "options"), CASES, ids=IDS)
def test_contract_on_cuda(factory: Any, options: dict[str, Any]) -> None:
    # fp32 on the GPU: TF32 matmuls would need looser tolerances than the contract's defaults.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    check_mixer(factory, d_model=64, options=options, seq_len=37, device="cuda", atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["gla", "rwkv6", "rwkv7"])
def test_fla_contract_on_cuda(name: str) -> None:
    if importlib.util.find_spec("fla") is None:
        skip_unless_required("fla is not installed")
    from hsa_backbones import fla_adapters

    def factory(d_model: int, **options: Any) -> Any:
        m = getattr(fla_adapters, f"build_{name}")(d_model, **options)
        torch.nn.init.normal_(m.attn.o_proj.weight, std=0.05)  # RWKV7 starts at zero
        return m

    options = {"head_dim": 32} if name == "rwkv7" else {"num_heads": 2}
    check_mixer(factory, d_model=64, options=options, seq_len=20, device="cuda", atol=2e-3, rtol=1e-2)


def test_mamba_ssm_chunk_scan_matches_the_torch_scan() -> None:
    kernels = mamba_triton()
    if kernels is None:
        skip_unless_required("mamba-ssm is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, t, h, p, n, groups = 2, 300, 4, 32, 16, 2
    x = torch.randn(b, t, h, p, device="cuda", generator=g)
    dt = torch.randn(b, t, h, device="cuda", generator=g)
    dt_bias = torch.randn(h, device="cuda", generator=g)
    A = -torch.rand(h, device="cuda", generator=g) * 4
    B = torch.randn(b, t, groups, n, device="cuda", generator=g)
    C = torch.randn(b, t, groups, n, device="cuda", generator=g)
    h0 = torch.randn(b, h, p, n, device="cuda", generator=g)
    y, final = kernels.chunk_scan(x, dt, A, B, C, chunk_size=64, dt_bias=dt_bias, dt_softplus=True,
                                  initial_states=h0, return_final_states=True)
    y_ref, final_ref = ssd_scan(x.double(), F.softplus(dt + dt_bias).double(), A.double(), B.double(), C.double(),
                                chunk_size=64, initial_state=h0.double())
    # mamba-ssm's kernels call tl.dot on fp32 operands without input_precision, so on the GPU they run
    # in TF32 (10-bit mantissa), not fp32: element-wise fp32 tolerances failed on the H200 (max error
    # 0.19 where |y| reaches about 100, 24% of the elements past atol 2e-3 / rtol 1e-3). Rounding only
    # the inputs to TF32 in the fp64 scan gives a relative error of 3.7e-4 (Frobenius) and 5e-4 of
    # max|y|; the kernel also rounds its intermediate products. The bounds below allow that and fail on
    # a wrong scan (in the fp64 scan, dropping the initial state gives a relative error of 4.5e-2,
    # dropping the dt bias 0.56).
    for got, ref in ((y.double(), y_ref), (final.double(), final_ref)):
        assert (got - ref).norm() <= 4e-3 * ref.norm(), "relative error above TF32's"
        assert (got - ref).abs().max() <= 5e-3 * ref.abs().max(), "an element off by more than TF32 allows"


@pytest.mark.parametrize("factory", [build_mamba, build_mamba2], ids=["mamba", "mamba2"])
def test_bf16_segments_and_backward_on_cuda(factory: Any) -> None:
    """bf16 weights and inputs with an fp32 carried state, through whichever CUDA path is available."""
    m = factory(64, d_state=16, **({"headdim": 16} if factory is build_mamba2 else {})).cuda().bfloat16()
    x = torch.randn(2, 50, 64, device="cuda", dtype=torch.bfloat16)
    y_full, _ = m(x)
    y1, state = m(x[:, :20], return_state=True)
    assert state is not None and state["ssm"].dtype == torch.float32
    y2, _ = m(x[:, 20:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1).float(), y_full.float(), atol=3e-2, rtol=3e-2)
    (y1.float().sum() + y2.float().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_mamba2_takes_the_triton_path_and_matches_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA with mamba-ssm installed, Mamba2 runs its Triton kernels (never a silent fallback), and
    the whole mixer (bf16 autocast, forward + backward, carried state) agrees with the PyTorch path."""
    if mamba_triton() is None:
        skip_unless_required("mamba-ssm is not installed")
    assert "Triton scan" in describe_paths(cuda=True)["mamba2"]
    torch.manual_seed(0)
    m = build_mamba2(256, d_state=64, headdim=32, chunk_size=64).cuda()
    x = torch.randn(2, 333, 256, device="cuda", requires_grad=True)
    state = {"conv": torch.randn(2, m.conv_dim, m.d_conv, device="cuda"),
             "ssm": torch.randn(2, m.nheads, m.headdim, m.d_state, device="cuda")}
    results = {}
    for path in ("auto", "torch"):
        monkeypatch.setenv("HSA_MAMBA_PATH", path)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, st = m(x, state, return_state=True)
        gx, gw = torch.autograd.grad(y.float().square().mean(), [x, m.in_proj.weight])
        results[path] = (y.float(), st["ssm"], gx, gw)
    for got, ref in zip(results["auto"], results["torch"]):
        err = (got - ref).norm() / ref.norm()
        assert err < 2e-2, f"relative error {err:.2e}"


def test_shipped_launch_table_narrows_to_library_candidates_on_this_gpu() -> None:
    """On the GPU the candidate lists are the real ones: every recorded winner of this architecture's
    table must be one of them (else narrowing silently stops), and loading narrows the kernels."""
    import json

    from hsa_backbones import launch_tables as lt
    from hsa_backbones.fla_adapters import import_fla_layers

    found = lt.table_for_this_gpu()
    if found is None:
        pytest.skip("no launch table for this GPU's architecture")
    if mamba_triton() is None or importlib.util.find_spec("fla") is None:
        skip_unless_required("mamba-ssm and fla are needed")
    import_fla_layers("the launch-table test")
    tuners = dict(lt.autotuners(["mamba_ssm", "fla"]))
    source, table = found
    for name, configs in table.items():
        candidates = [json.dumps(lt.config_record(c), sort_keys=True) for c in tuners[name].configs]
        assert any(json.dumps(c, sort_keys=True) in candidates for c in configs), f"{source}: {name}"
        assert len(tuners[name].configs) <= len(configs) + 1  # narrowed on import: winners + the fallback


def test_swa_takes_the_windowed_kernel_in_bf16_and_matches_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA with fla installed, swa under bf16 autocast runs fla's windowed kernel (never a silent
    fallback) and agrees with SDPA's masked path: a 4K-token forward and backward with a 512-token window,
    and a continuation from a full cache."""
    from hsa_backbones.fast_paths import sliding_window_kernel

    if sliding_window_kernel() is None:
        skip_unless_required("fla is not installed")
    assert "fla parallel_attn" in describe_paths(cuda=True)["swa"]
    import hsa_backbones.attention as attention_module

    calls: list[int] = []
    kernel = sliding_window_kernel()
    monkeypatch.setattr(attention_module, "sliding_window_kernel",
                        lambda: lambda q, *a, **kw: calls.append(q.shape[1]) or kernel(q, *a, **kw))
    torch.manual_seed(0)
    m = build_swa(256, num_heads=4, window=512).cuda()
    x = torch.randn(2, 4096, 256, device="cuda", requires_grad=True)

    def run() -> tuple[Tensor, ...]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = m(x)
            _, state = m(x[:, :3000], return_state=True)
            tail, _ = m(x[:, 3000:], state)
        return (y.float(), tail.float(), *torch.autograd.grad(y.float().square().mean(), [x, *m.parameters()]))

    got = run()
    assert calls == [4096, 3000, 1096 + 511]
    monkeypatch.setenv("HSA_SWA_PATH", "torch")
    want = run()
    for a, b in zip(got, want, strict=True):  # both bf16 paths against each other: relative norm error
        assert ((a - b).norm() / b.norm()).item() < 2e-2
