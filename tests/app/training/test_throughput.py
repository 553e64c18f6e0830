"""The parts of ``hsa bench model`` that run without a GPU: the comparison layouts, the FLOP formula,
the kernel families, the report, and the command's CPU behaviour (exit 3, usage errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hsa_app.training.throughput import (
    ModelBenchResult,
    _family,
    equal_transformer_spec,
    model_flops_per_token,
    no_hsa_spec,
)
from hsa_cli.app import app
from hsa_cli.bench_model import parts_table, plot, table
from typer.testing import CliRunner

from hsa_core.layout import load_spec, resolve
from hsa_core.model import HSALanguageModel
from hsa_core.presets import path as preset_path


def _params(spec: dict) -> int:
    return HSALanguageModel.from_spec(spec, device="meta").num_parameters()


@pytest.fixture(scope="module")
def ramba() -> dict:
    return resolve(load_spec(preset_path("ramba-370m")))


def test_no_hsa_twin_keeps_every_backbone_layer(ramba: dict) -> None:
    twin = resolve(no_hsa_spec(ramba))
    assert [layer["kind"] for layer in twin["layers"]] == ["mamba2"] * 48
    assert twin["memories"] == {} and twin["retrieval"] == {}
    full, bare = _params(ramba), _params(twin)
    assert 0 < full - bare < 0.07 * full  # the HSA extras are ~5% of RAMba-370M


def test_equal_transformer_is_within_one_layer_of_the_parameter_count(ramba: dict) -> None:
    target = _params(ramba)
    spec = equal_transformer_spec(ramba, target)
    kinds = {layer["kind"] for layer in spec["layers"]}
    assert kinds == {"attention"} and all(layer["mlp"] for layer in spec["layers"])
    per_layer = 4 * 1024 * 1024 + 3 * 1024 * spec["model"]["mlp_hidden"]
    assert abs(_params(spec) - target) <= per_layer / 2 + 1024 * 4


def test_flops_count_every_linear_and_the_hsa_attention(ramba: dict) -> None:
    model = HSALanguageModel.from_spec(ramba, device="meta")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, __import__("torch").nn.Linear))
    flops = model_flops_per_token(model, 4096)
    hsa = 3 * 6 * 4 * 8 * 64 * 64 * 16  # 3 layers, top-8 chunks of 64, D=64, 16 heads
    assert flops == pytest.approx(6 * linear + hsa)
    tf = HSALanguageModel.from_spec(equal_transformer_spec(ramba, _params(ramba)), device="meta")
    assert model_flops_per_token(tf, 65536) > model_flops_per_token(tf, 4096)  # causal attention grows with T


@pytest.mark.parametrize(("kernel", "family"), [
    pytest.param("_chunk_scan_fwd_kernel", "Mamba2 SSD scan", id="scan"),
    pytest.param("_hsa_fwd_kernel", "HSA attention + selection", id="hsa"),
    pytest.param("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul (projections, LM head)", id="gemm"),
    pytest.param("causal_conv1d_fwd_kernel", "causal conv", id="conv"),
    pytest.param("void at::native::vectorized_elementwise_kernel<4>", "elementwise and copies", id="pointwise"),
    pytest.param("some_unknown_kernel_name", "other kernels", id="unknown"),
])
def test_kernel_families(kernel: str, family: str) -> None:
    assert _family(kernel) == family


def _row(**kw: object) -> dict:
    base = ModelBenchResult("ramba-370m", "layout", 389_515_904, 4096, 8, False, tokens_per_s=83829.0,
                            step_ms=390.9, tflops=199.0, mfu=0.201, peak_gib=50.7, first_step_s=36.6, loss=2.7,
                            parts_ms={"Mamba2 SSD scan": 119.3, "matmul": 99.4})
    d = base.to_dict()
    d.update(kw)
    return d


def test_report_table_and_plot(tmp_path: Path) -> None:
    rows = [_row(), _row(variant="no-hsa", tokens_per_s=None, step_ms=None, tflops=None, mfu=None, peak_gib=None,
                         error="out of memory", parts_ms={})]
    md = table(rows)
    assert "| ramba-370m | layout | 389.5M | 4096 x 8 | off | 83,829 | 390.9 | 199 | 20.1% | 50.7 | 36.6 |" in md
    assert "| out of memory |" in md
    assert "Mamba2 SSD scan 119.3 ms (31%)" in parts_table(rows)
    plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_bench_model_without_cuda_exits_3_and_checks_arguments_first(tmp_path: Path) -> None:
    import torch

    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "model", "ramba-cpu", "--checkpointing", "sometimes"])
    assert bad.exit_code == 2
    bad = runner.invoke(app, ["bench", "model", "ramba-cpu", "--seq-len", "4k,16k", "--batch", "1,2,3"])
    assert bad.exit_code == 2
    if torch.cuda.is_available():
        pytest.skip("the no-CUDA path")
    res = runner.invoke(app, ["bench", "model", "ramba-cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 3
    assert "CUDA" in res.output and len(res.output.strip().splitlines()) == 1


def test_results_json_is_what_the_readme_cites() -> None:
    """The committed run's numbers are the ones the results README and the top README quote."""
    root = Path(__file__).resolve().parents[3]
    doc = json.loads((root / "bench/results/h200_model/run3_compare4k.json").read_text())
    layout = next(r for r in doc["rows"] if r["variant"] == "layout")
    assert f"{layout['tokens_per_s']:,.0f}" in (root / "bench/results/h200_model/README.md").read_text()
