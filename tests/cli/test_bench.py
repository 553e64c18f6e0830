"""``hsa bench kernels`` on CPU: help, the no-CUDA and outside-a-checkout errors (exit 3), usage errors
(exit 2), the wiring of options into the harness's ``run_benchmark`` (``bench/bench_kernels.py``, loaded
from the checkout), and the script itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hsa_cli import bench as bench_cli
from hsa_cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
benchmark = bench_cli.load_kernel_bench()
FLAGS = ("--shapes", "--out", "--published", "--variants", "--no-correctness", "--sweep", "--selection")
WIDE = {"COLUMNS": "200"}  # rich would wrap the usage-error box otherwise


def test_bench_kernels_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["bench", "kernels", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    for flag in FLAGS:
        assert flag in result.output
    listed = runner.invoke(app, ["bench", "--help"], env=WIDE)
    assert listed.exit_code == 0 and "kernels" in listed.output
    assert "bench" in runner.invoke(app, ["--help"], env=WIDE).output


def test_cli_defaults_match_the_benchmark_module(runner: CliRunner) -> None:
    """The CLI spells its defaults out (no torch import for --help); they must equal the script's."""
    import typer.main

    command = typer.main.get_command(app).commands["bench"].commands["kernels"]
    defaults = {p.name: p.default for p in command.params}
    assert defaults["shapes"] == benchmark.DEFAULT_SHAPES
    assert str(defaults["out"]) == benchmark.DEFAULT_OUT
    assert str(defaults["published"]) == benchmark.DEFAULT_PUBLISHED
    assert defaults["variants"] == benchmark.DEFAULT_VARIANTS


def test_without_cuda_one_line_error_exit_3(runner: CliRunner, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", "kernels", "--out", str(out)])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "needs a CUDA GPU" in lines[0]
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(("args", "option", "value"), [
    (["--shapes", "4096xq"], "--shapes", "4096xq"),
    (["--shapes", "4000x1"], "--shapes", "4000x1"),
    (["--shapes", ""], "--shapes", "no shapes"),
    (["--variants", "query,chunk"], "--variants", "chunk"),
    (["--selection", "local"], "--selection", "local"),
])
def test_bad_option_values_are_usage_errors(runner: CliRunner, monkeypatch: pytest.MonkeyPatch,
                                            args: list[str], option: str, value: str) -> None:
    # checked before the CUDA check, so the same on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["bench", "kernels", *args], env=WIDE)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}" in result.output and value in result.output
    assert "Traceback" not in result.output


def test_options_reach_run_benchmark(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With the GPU part replaced: parsed options are passed on, the table and absent competitors shown."""
    seen: dict = {}
    data = json.loads((ROOT / "bench" / "results" / "h200" / "run7" / "results.json").read_text())
    data["published_kernel"] = data["fla_nsa"] = False
    for sh in data["shapes"]:
        sh["attention"] = [r for r in sh["attention"] if r["name"] not in ("published HSA", "fla NSA selected")]

    def fake_run(shapes, out_dir, **kwargs):
        seen.update(kwargs, shapes=shapes, out_dir=out_dir)
        return data

    monkeypatch.setattr(benchmark, "cuda_problem", lambda: None)
    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    result = runner.invoke(app, ["bench", "kernels", "--shapes", "4096x4,65536x1", "--out", str(tmp_path),
                                 "--variants", "atomic_dq", "--no-correctness",
                                 "--published", str(tmp_path / "absent.py")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert seen["shapes"] == [(4096, 4), (65536, 1)] and seen["out_dir"] == tmp_path
    assert seen["variants"] == {"atomic_dq"} and seen["correctness"] is False
    assert seen["sweep"] is False and seen["published"] == tmp_path / "absent.py"
    assert seen["command"].split()[0] == "hsa"  # recorded in results.json as the command that ran
    assert seen["selection"] == "uniform"
    assert benchmark.markdown(data) in result.stdout
    assert "| - / - | - / - |" in result.stdout  # absent competitors read '-'
    assert "note: published HSA kernel" in result.stdout and "note: fla NSA" in result.stdout


def test_outside_a_checkout_one_line_error_exit_3(runner: CliRunner, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, bench_cli.MODULE_NAME)
    monkeypatch.setattr(bench_cli, "harness_path", lambda: None)
    result = runner.invoke(app, ["bench", "kernels", "--shapes", "bad"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hsa bench kernels runs from a checkout"), lines
    assert "bench/bench_kernels.py" in lines[0]


def test_harness_is_found_in_this_checkout() -> None:
    assert bench_cli.harness_path() == ROOT / "bench" / "bench_kernels.py"
    assert benchmark.__file__ == str(ROOT / "bench" / "bench_kernels.py")
    assert bench_cli.load_kernel_bench() is benchmark  # loaded once per process


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "bench_kernels.py"), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


@pytest.mark.slow
def test_script_wrapper_same_errors() -> None:
    bad = _script("--shapes", "4096xq")
    assert bad.returncode == 2 and "--shapes" in bad.stderr and "4096xq" in bad.stderr
    helped = _script("--help")
    assert helped.returncode == 0
    for flag in FLAGS:
        assert flag in helped.stdout
    nocuda = _script("--out", "unused")
    assert nocuda.returncode == 3 and nocuda.stderr.strip().startswith("error: ") and "CUDA" in nocuda.stderr
    assert not (ROOT / "unused").exists()
