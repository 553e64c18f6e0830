"""``bench/record_selections.py`` and ``bench_kernels.py --selection recorded:FILE`` on CPU: a tiny
RAMba's selections recorded segment by segment equal those of one pass, obey the causal rule, and feed
the kernel benchmark's inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hsa_cli.bench import load_kernel_bench
from safetensors import safe_open
from safetensors.torch import save_file

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "app" / "training" / "tiny.yaml"
benchmark = load_kernel_bench()


def _recorder():
    spec = importlib.util.spec_from_file_location("record_selections", ROOT / "bench" / "record_selections.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


recorder = _recorder()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RAMba with the benchmark's chunk size (64) and top-8, saved as a model directory."""
    spec = load_spec(TINY, overrides=["memories.mid.chunk_size=64", "retrieval.sel.topk=8"])
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("sel") / "model"
    HSALanguageModel.from_spec(spec).save_pretrained(directory)
    return directory


def test_repeat_rate_counts_chunks_an_earlier_slot_of_the_block_chose() -> None:
    idx = torch.tensor([[3, 2], [3, 1], [2, -1], [5, 4],    # block 1: 3 (slot 2) and 2 (slot 4) repeat
                        [0, 1], [2, 3], [4, 5], [6, 7]])    # block 2: none
    assert recorder.repeat_rate(idx[:, None, :], block=4) == pytest.approx(2 / 15)
    assert recorder.repeat_rate(torch.full((8, 1, 2), -1), block=4) == 0.0


def test_recorded_in_segments_equals_one_pass_and_is_causal(model_dir: Path, tmp_path: Path) -> None:
    T, S, K = 1024, 64, 8
    out = tmp_path / "sel.safetensors"
    assert recorder.main([str(model_dir), "--task", "passkey", "--length", str(T), "--segment-len", "320",
                          "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        names = [k for k in f.keys() if k.startswith("indices.")]  # noqa: SIM118 (safe_open is not iterable)
        idx = f.get_tensor(names[0])
    assert len(names) == 1 and idx.shape == (T, 1, K) and idx.dtype == torch.int32
    assert meta["chunk_size"] == "64" and meta["topk"] == "8" and meta["length"] == str(T)
    module = names[0].removeprefix("indices.")
    assert json.loads(meta["distinct_per_block"])[module]["16"] == recorder.distinct_per_block(idx, 16)
    t = torch.arange(T)[:, None, None]
    valid = idx >= 0
    assert ((idx + 1) * S <= t + 1)[valid].all()  # only chunks that ended at or before the token
    assert valid[S * (K + 1):].all()  # tokens that see >= K chunks fill every slot
    one = tmp_path / "one.safetensors"
    recorder.main([str(model_dir), "--task", "passkey", "--length", str(T), "--segment-len", str(T),
                   "--out", str(one)])
    with safe_open(str(one), framework="pt") as f:
        assert torch.equal(f.get_tensor(names[0]), idx)  # carried cache = one pass


def test_bench_inputs_from_a_recorded_file(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel.safetensors"
    recorder.main([str(model_dir), "--task", "passkey", "--length", "1024", "--out", str(out)])
    sel = f"recorded:{out}"
    assert benchmark.selection_problem(sel) is None
    _, _, _, idx, w = benchmark.make_inputs(768, 2, dtype=torch.float32, selection=sel, device="cpu")
    assert idx.shape == (2, 768, benchmark.H, benchmark.K) and idx.dtype == torch.int32 and w.shape == idx.shape
    with safe_open(str(out), framework="pt") as f:
        rec = f.get_tensor(next(k for k in f.keys() if k.startswith("indices.")))  # noqa: SIM118
    expect = rec[:768, 0].clamp(min=0)  # empty slots become chunk 0, as in the drawn selections
    assert torch.equal(idx[0, :, 0], expect) and torch.equal(idx[1], idx[0])
    with pytest.raises(ValueError, match="fewer than T=2,048"):
        benchmark.make_inputs(2048, 1, dtype=torch.float32, selection=sel, device="cpu")


def test_bad_recorded_selections_are_refused(tmp_path: Path) -> None:
    assert "no such file" in benchmark.selection_problem(f"recorded:{tmp_path / 'absent.safetensors'}")
    assert "must be one of" in benchmark.selection_problem("local")
    other = tmp_path / "s32.safetensors"
    save_file({"indices.x": torch.zeros(512, 1, 8, dtype=torch.int32)}, str(other), metadata={"chunk_size": "32"})
    with pytest.raises(ValueError, match="chunk size 32"):
        benchmark.recorded_selection(other, 256)
    with pytest.raises(SystemExit):  # argparse: one line, exit 2
        benchmark.main(["--selection", "recorded:/nonexistent.safetensors", "--out", str(tmp_path / "o")])


def test_distinct_chunks_per_block_count_each_valid_chunk_once() -> None:
    idx = torch.tensor([[3, 2], [3, 1], [2, -1], [5, 4],    # block 1: 3, 2, 1, 5, 4 -> 5 distinct
                        [0, 0], [0, -1], [0, 0], [-1, -1]])  # block 2: 0 -> 1 distinct
    two_heads = torch.stack([idx, idx.flip(0)], 1)           # (T, H=2, K): head 1 = the blocks reversed
    assert recorder.distinct_per_block(idx[:, None, :], 4) == {"mean": 3.0, "max": 5}
    assert recorder.distinct_per_block(two_heads, 4) == {"mean": 3.0, "max": 5}
    assert recorder.distinct_per_block(idx[:, None, :], 8) == {"mean": 6.0, "max": 6}
    assert recorder.distinct_per_block(idx[:3, None, :], 4) == {"mean": 0.0, "max": 0}  # no whole block


def test_stats_of_a_recorded_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sel.safetensors"
    idx = torch.arange(64, dtype=torch.int32).reshape(64, 1, 1).repeat(1, 1, 2) // 8  # 8 tokens per chunk
    save_file({"indices.layers.0.sel": idx, "weights.layers.0.sel": torch.ones(64, 1, 2)}, str(path))
    assert recorder.main(["--stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layers.0.sel: repeat rate (4-token blocks) 0.8750" in out  # 7 of each block's 8 slots repeat
    assert "4 tokens: 1.0 (max 1), 16 tokens: 2.0 (max 2), 64 tokens: 8.0 (max 8)" in out


@pytest.mark.parametrize("argv", [pytest.param(["--stats", "{tmp}/absent.safetensors"], id="absent"),
                                  pytest.param(["--stats", "{tmp}/not.safetensors"], id="not-safetensors")])
def test_stats_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    (tmp_path / "not.safetensors").write_text("hello")
    assert recorder.main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert "error: --stats" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [pytest.param(["run", "--stats", "f"], id="stats-with-run"),
                                  pytest.param(["run", "--out", "o"], id="no-input"),
                                  pytest.param(["--task", "passkey", "--out", "o"], id="no-run")])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        recorder.main(argv)
    assert exit_info.value.code == 2
