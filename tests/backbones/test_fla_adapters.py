"""GLA, RWKV6, RWKV7 adapters around fla: the Mixer contract (under Triton's interpreter on CPU),
the state conversion in fla's chunked (training) path, and the CPU/missing-dependency behaviour.

Shapes are tiny on purpose: every fla call runs through Triton's interpreter on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from hsa_backbones import fla_adapters
from hsa_backbones.fla_adapters import (
    GLA_DEFAULTS,
    RWKV6_DEFAULTS,
    RWKV7_DEFAULTS,
    build_gla,
    build_rwkv6,
    build_rwkv7,
)

from hsa_core.errors import HSAError, MissingDependencyError
from hsa_core.testing import check_mixer, check_segments

# The adapters import fla lazily, so the imports above work without it; the tests need it.
pytest.importorskip("fla", reason="fla is not installed (pip install 'hsa-toolkit[fla]')")
# fla warns about running without a GPU, fp32 chunked kernels and RWKV's reference status; numpy about
# the interpreter converting 1-element arrays (our loop-variable tensors) to ints.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::RuntimeWarning", "ignore::DeprecationWarning")


def rwkv7_live(d_model: int, **options: Any) -> fla_adapters.RWKV7:
    """RWKV7 with a non-zero ``o_proj``: fla zero-initialises it (the block starts as the identity),
    which would make every output zero and the causality check vacuous."""
    m = build_rwkv7(d_model, **options)
    torch.nn.init.normal_(m.attn.o_proj.weight, std=0.2)
    return m


CASES: list[tuple[Any, dict[str, Any]]] = [
    (build_gla, {"num_heads": 2}),
    (build_gla, {"num_heads": 2, "num_kv_heads": 1, "use_short_conv": True}),
    (build_rwkv6, {"num_heads": 2, "proj_low_rank_dim": 8, "gate_low_rank_dim": 16}),
    (rwkv7_live, {"head_dim": 16}),
]
IDS = ["gla", "gla-gqa-shortconv", "rwkv6", "rwkv7"]


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "options"), CASES, ids=IDS)
def test_contract(factory: Any, options: dict[str, Any]) -> None:
    check_mixer(factory, d_model=32, options=options, batch=2, seq_len=8, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "options"), [CASES[1], CASES[3]], ids=["gla-gqa-shortconv", "rwkv7"])
def test_segments_in_the_training_path(factory: Any, options: dict[str, Any]) -> None:
    """With gradients on, fla switches RWKV7 to its chunked kernels (GLA uses the recurrent kernel for
    T <= 64 either way); carried states must work there too."""
    torch.manual_seed(0)
    m = factory(32, **options).train()
    x = torch.randn(1, 10, 32)
    with torch.enable_grad():
        y_full, s_full = m(x, return_state=True)
        y1, s1 = m(x[:, :4], return_state=True)
        y2, s2 = m(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(s2["recurrent"], s_full["recurrent"], atol=1e-4, rtol=1e-3)
    (y2.sum() + y1.sum()).backward()


def test_rwkv7_is_its_own_first_layer() -> None:
    m = build_rwkv7(32, head_dim=16)
    assert m.attn.layer_idx == 0 and not hasattr(m.attn, "v_lora")
    assert m.attn.num_heads == 2
    assert torch.count_nonzero(m.attn.o_proj.weight) == 0  # fla's RWKV7 init: the block starts as identity
    assert build_rwkv7(32, num_heads=4).attn.head_dim == 8


@pytest.mark.parametrize(("factory", "defaults"), [(build_gla, GLA_DEFAULTS), (build_rwkv6, RWKV6_DEFAULTS),
                                                   (build_rwkv7, RWKV7_DEFAULTS)], ids=["gla", "rwkv6", "rwkv7"])
def test_defaults_are_the_factory_options(factory: Any, defaults: dict[str, Any]) -> None:
    with torch.device("meta"):
        m = factory(128, **defaults)
    state = m.init_state(2, device="meta")
    assert all(v.shape[0] == 2 for v in state.values())


def test_state_is_not_modified_in_place() -> None:
    m = build_gla(32, num_heads=2, use_short_conv=True).eval()
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        _, state = m(x, return_state=True)
        before = {k: v.clone() for k, v in state.items()}
        m(torch.randn(1, 3, 32), state)
    for k, v in state.items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_missing_fla_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fla.layers", None)
    with pytest.raises(MissingDependencyError, match=r"hsa-toolkit\[fla\]"):
        build_gla(32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used without CUDA")
def test_fla_imported_without_the_interpreter_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(HSAError, match="TRITON_INTERPRET=1"):
        build_gla(32)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used without CUDA")
def test_cpu_user_without_triton_interpret_just_works() -> None:
    """A fresh process on a CPU machine, TRITON_INTERPRET unset: the adapter sets it before importing fla."""
    code = textwrap.dedent("""
        import os, torch
        from hsa_backbones.fla_adapters import build_gla
        m = build_gla(16, num_heads=2)
        y, _ = m(torch.randn(1, 4, 16))
        assert os.environ["TRITON_INTERPRET"] == "1" and y.shape == (1, 4, 16)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_segments_check_catches_a_dropped_state() -> None:
    """Sanity check of the harness on a real adapter: forgetting the shift state breaks segments."""

    class Forgetful(fla_adapters.RWKV6):
        def _to_fla(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
            return {"recurrent_state": state["recurrent"], "conv_state": torch.zeros_like(state["shift"])}

    torch.manual_seed(0)
    m = Forgetful(32, num_heads=2, proj_low_rank_dim=8, gate_low_rank_dim=16).eval()
    with pytest.raises(AssertionError, match="segments"):
        check_segments(m, torch.randn(1, 6, 32), n_splits=1, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used without CUDA")
def test_interpreter_workarounds_touch_only_fla_kernels() -> None:
    """No Triton class is patched: fla's own autotuners and interpreted functions get instance-level
    workarounds, our kernels and Triton's classes keep theirs."""
    import functools

    from hsa_kernels.hsa_attention import forward
    from triton.runtime import autotuner, interpreter

    build_gla(16, num_heads=2)  # imports fla.layers and prepares its kernels
    assert fla_adapters.prepare_fla_for_interpreter() == 0  # all done already (idempotent)
    assert isinstance(vars(autotuner.Autotuner)["do_bench"], functools.cached_property)
    assert vars(interpreter.FunctionRewriter)["_transform_ast"].__module__ == "triton.runtime.interpreter"
    assert not hasattr(forward._hsa_fwd_kernel.rewriter, "_hsa_loop_vars")
    fla_kernels = [obj for name, mod in sys.modules.items() if name.startswith("fla.") and mod is not None
                   for obj in vars(mod).values() if isinstance(obj, autotuner.Autotuner)]
    assert fla_kernels and all(k.__dict__.get("do_bench") is fla_adapters._zero_bench for k in fla_kernels)

