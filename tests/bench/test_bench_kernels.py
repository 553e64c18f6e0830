"""``bench/bench_kernels.py`` (the kernel benchmark harness) on CPU: option parsing, variants, the markdown
writer, and run_benchmark's files with the GPU parts replaced (the timings themselves need a CUDA GPU
and are not tested here). Loaded the way ``hsa bench kernels`` loads it, from the checkout."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from hsa_cli.bench import load_kernel_bench

from tests.optional_deps import skip_unless_required

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "h200"
benchmark = load_kernel_bench()


def _row(name: str, fwd: float | None, fwdbwd: float | None = None, **extra) -> dict:
    row = {"name": name, "fwd_ms": fwd, "fwd_mem_mb": 10.0, "fwdbwd_ms": fwdbwd, "fwdbwd_mem_mb": 20.0}
    if fwd:
        row["fwd_tflops"] = 100.0
    if fwdbwd:
        row["fwdbwd_tflops"] = 50.0
    row.update(extra)
    return row


def _results(*, with_competitors: bool = True, correctness: bool = True) -> dict:
    """A hand-made results dict: one shape (T=4096, B=4), ours + one variant, optional competitors."""
    rows = [_row("ours", 1.0, 4.0), _row("ours (query-outer fwd)", 1.25, 4.5)]
    if with_competitors:
        rows += [_row("published HSA", 2.0, 20.0), _row("fla NSA selected", 1.5, None)]
    rows += [_row("SDPA flash", 8.0, 30.0, dense=True), _row("SDPA cuDNN", 6.0, 24.0, dense=True)]
    res = {"device": "Test GPU", "date": "2026-01-01 00:00 UTC", "command": "hsa bench kernels", "torch": "x",
           "triton": "y", "python": "3", "published_kernel": with_competitors, "fla_nsa": with_competitors,
           "schedule": "auto",
           "shapes": [{"T": 4096, "B": 4, "attention": rows,
                       "selection": {"fused_ms": 0.5, "fused_mem_mb": 6.0, "dense_ms": 2.0, "dense_mem_mb": 320.0,
                                     "idx_agree_last8k": 1.0}}]}
    if correctness:
        res["correctness"] = {"o": {"triton_bf16": 1e-3, "torch_bf16": 2e-3, "ratio": 0.5}}
    return res


# --------------------------------------------------------------------------------------------- parsing
def test_parse_shapes_default_and_spacing() -> None:
    assert benchmark.parse_shapes(benchmark.DEFAULT_SHAPES) == benchmark.SHAPES
    assert benchmark.parse_shapes(" 4096x4 , 8192X2") == [(4096, 4), (8192, 2)]


@pytest.mark.parametrize(("spec", "needle"), [
    ("4096xq", "'4096xq' is not TxB"),
    ("4096", "'4096' is not TxB"),
    ("4096x4x1", "'4096x4x1' is not TxB"),
    ("4096x4,", "'' is not TxB"),
    ("", "no shapes"),
    ("0x1", "positive"),
    ("4096x0", "positive"),
    ("4000x1", "multiple of the chunk size 64"),
    ("256x1", "at least 512"),
])
def test_parse_shapes_errors_name_the_item(spec: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        benchmark.parse_shapes(spec)
    assert needle in str(info.value)


def test_parse_variants() -> None:
    assert benchmark.parse_variants("query,atomic_dq") == {"query", "atomic_dq"}
    assert benchmark.parse_variants(" QUERY ") == {"query"}
    assert benchmark.parse_variants("") == set() and benchmark.parse_variants(None) == set()
    assert benchmark.parse_variants(benchmark.DEFAULT_VARIANTS) == {"query"}
    # the deleted schedules are unknown ("block" is the default column now, not a variant)
    with pytest.raises(ValueError, match=r"unknown variant.*block, chunk, tma.*known: query, atomic_dq"):
        benchmark.parse_variants("block,tma,chunk")


def test_attention_variants_are_keyword_arguments_of_the_entry_point() -> None:
    assert benchmark.attention_variants({"query"}) == [("query-outer fwd", {"schedule": "query"})]
    assert benchmark.attention_variants({"atomic_dq"}) == [("fused bwd, atomic dQ", {"atomic_dq": True})]
    assert benchmark.attention_variants(set()) == []
    import inspect

    from hsa_kernels.hsa_attention import hsa_attention_triton

    params = inspect.signature(hsa_attention_triton).parameters
    for _, kwargs in benchmark.VARIANTS.values():
        assert set(kwargs) <= set(params)


def test_variant_names_from_results() -> None:
    assert benchmark.variant_names(_results()) == ["ours (query-outer fwd)"]
    assert benchmark.variant_names({"shapes": []}) == []


# -------------------------------------------------------------------------------------------- markdown
def test_markdown_tables_from_a_hand_made_results_dict() -> None:
    md = benchmark.markdown(_results())
    lines = md.splitlines()
    assert lines[0] == "# HSA kernels on Test GPU (2026-01-01 00:00 UTC)"
    assert "command: `hsa bench kernels`" in md
    header = ("| T (batch) | ours (default: auto fwd) | ours (query-outer fwd) | published HSA | fla NSA selected |"
              " SDPA flash | SDPA cuDNN | ours vs published | ours vs NSA |")
    assert header in lines
    assert lines[lines.index(header) + 1] == "|---|---|---|---|---|---|---|---|---|"
    # fwd with 3 decimals, fwd+bwd with 2; ratios competitor/ours; a missing time reads '-'
    assert ("| 4K (4) | 1.000 / 4.00 | 1.250 / 4.50 | 2.000 / 20.00 | 1.500 / - | 8.000 / 30.00 | 6.000 / 24.00 |"
            " 2.00x / 5.00x | 1.50x / - |") in lines
    assert "| 4K (4) | 100 / 50 | 100 / 50 | 100 / - | 100 / 50 | 100 / 50 |" in lines  # TFLOP/s
    assert "| 4K (4) | 10 / 20 | 10 / 20 | 10 / 20 | 10 / 20 | 10 / 20 |" in lines  # memory
    assert "| 4K (4) | 0.500 | 2.000 | 4.00x | 6 | 320 | 1.0000 |" in lines  # selection
    assert "| o | 1.00e-03 | 2.00e-03 | 0.50 |" in lines
    assert md.endswith("|\n")


def test_markdown_names_the_selection_and_old_results_read_uniform() -> None:
    assert "selection precomputed (uniform over visible chunks)" in benchmark.markdown(_results())
    assert "shared by its tokens" in benchmark.markdown({**_results(), "selection": "block"})


def test_markdown_absent_competitors_read_dash() -> None:
    md = benchmark.markdown(_results(with_competitors=False, correctness=False))
    assert ("| 4K (4) | 1.000 / 4.00 | 1.250 / 4.50 | - / - | - / - | 8.000 / 30.00 | 6.000 / 24.00 | - / - | - / - |"
            in md.splitlines())
    assert "Error vs fp32" not in md


@pytest.mark.parametrize("run", ["run7", "run7_block"])
def test_markdown_reproduces_the_committed_tables(run: str) -> None:
    """The committed results.md of the current tables is what the writer makes of their results.json."""
    data = json.loads((RESULTS / run / "results.json").read_text())
    assert benchmark.markdown(data) == (RESULTS / run / "results.md").read_text()


# ------------------------------------------------------------------------------------- run_benchmark
@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace every GPU part of run_benchmark; record what bench_shape was asked."""
    calls: dict = {"shapes": []}

    def bench_shape(T, B, published, nsa, variants=(), selection="uniform"):
        calls["shapes"].append((T, B, published, nsa, set(variants), selection))
        sh = _results()["shapes"][0]
        return {**sh, "T": T, "B": B}

    monkeypatch.setattr(benchmark, "bench_shape", bench_shape)
    monkeypatch.setattr(benchmark, "check_correctness", lambda: {"o": {"triton_bf16": 1.0, "torch_bf16": 1.0,
                                                                        "ratio": 1.0}})
    monkeypatch.setattr(benchmark, "load_nsa", lambda: None)
    monkeypatch.setattr(benchmark, "run_sweep", lambda: {"fwd": [1], "bwd": [], "select": []})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "triton", types.SimpleNamespace(__version__="9.9"))
    return calls


@pytest.mark.slow
def test_run_benchmark_writes_the_same_files(fake_gpu: dict, tmp_path: Path) -> None:
    out = tmp_path / "h200"
    res = benchmark.run_benchmark([(4096, 4), (8192, 1)], out, published=tmp_path / "absent.py",
                                  variants=["query"], command="cmd")
    assert [c[:2] for c in fake_gpu["shapes"]] == [(4096, 4), (8192, 1)]
    assert all(c[2] is None and c[3] is None and c[4] == {"query"} and c[5] == "uniform" for c in fake_gpu["shapes"])
    assert list(res) == ["device", "date", "command", "torch", "triton", "python", "published_kernel", "fla_nsa",
                         "shapes", "schedule", "selection", "correctness"]
    assert res["published_kernel"] is False and res["fla_nsa"] is False and res["command"] == "cmd"
    assert res["schedule"] == "block"
    assert json.loads((out / "results.json").read_text()) == res
    assert (out / "results.md").read_text() == benchmark.markdown(res)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skip_unless_required("matplotlib (hsa-toolkit[plot]) draws results.png")
    assert (out / "results.png").stat().st_size > 0


@pytest.mark.slow
def test_run_benchmark_without_correctness_and_sweep(fake_gpu: dict, tmp_path: Path) -> None:
    res = benchmark.run_benchmark([(4096, 4)], tmp_path / "a", published=None, variants="", correctness=False)
    assert "correctness" not in res and fake_gpu["shapes"][0][4] == set()
    sw = benchmark.run_benchmark([(4096, 4)], tmp_path / "b", sweep=True)
    assert sw == {"fwd": [1], "bwd": [], "select": []}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["sweep.json"]
    with pytest.raises(ValueError, match="unknown variant"):
        benchmark.run_benchmark([(4096, 4)], tmp_path / "c", variants=["bogus"])
    # block selections reach every shape and are named in results.md
    res = benchmark.run_benchmark([(4096, 4)], tmp_path / "d", published=None, variants="", correctness=False,
                                  selection="block")
    assert fake_gpu["shapes"][-1][5] == "block" and res["selection"] == "block"
    assert "one uniform draw per 64-token block" in (tmp_path / "d" / "results.md").read_text()
    with pytest.raises(ValueError, match="selection must be one of uniform, block"):
        benchmark.run_benchmark([(4096, 4)], tmp_path / "e", selection="local")


def test_load_published_absent_or_broken_is_none(tmp_path: Path) -> None:
    assert benchmark.load_published(None) is None
    assert benchmark.load_published(tmp_path / "absent.py") is None
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    assert benchmark.load_published(broken) is None
    good = tmp_path / "good.py"
    good.write_text("HSA = 'kernel'\n")
    assert benchmark.load_published(good).HSA == "kernel"


def test_cuda_problem_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in benchmark.cuda_problem()


def test_make_inputs_selections() -> None:
    T, C = 1024, 1024 // benchmark.S
    for selection in benchmark.SELECTIONS:
        _, _, _, idx, w = benchmark.make_inputs(T, 2, dtype=torch.float32, selection=selection, device="cpu")
        assert idx.shape == (2, T, benchmark.H, benchmark.K) and idx.dtype == torch.int32 and w.shape == idx.shape
        t = torch.arange(T)
        nvis = (t // benchmark.S).clamp(min=1)
        assert (idx >= 0).all() and (idx < nvis[None, :, None, None]).all()  # causal: visible chunks only
        late = idx[:, t // benchmark.S >= benchmark.K]  # tokens that see >= K chunks: K distinct ones
        assert (late.sort(-1).values.diff(dim=-1) > 0).all()
        blocks = idx.view(2, C, benchmark.S, benchmark.H, benchmark.K)
        same = (blocks == blocks[:, :, :1]).all()
        assert bool(same) == (selection == "block")  # block: one draw shared by the 64 tokens of a block
