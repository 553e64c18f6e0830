"""The H200 demonstration scripts, run end to end on CPU at toy size.

Device time is scarce: a script that breaks on the GPU machine (a renamed option, a missing file, a
shell slip) costs minutes of a 30-minute lease. This runs ``bench/train/demo_one.sh`` (two training
stages with time limits, the fitted stage-2 step count, both evals), ``run_demo.sh``'s summary and
``plot_demo.py`` on CPU with a few steps, so such slips fail here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `hsa`, `python3`
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", RUNS=str(tmp_path / "runs"),
               OUT_DIR=str(tmp_path / "out"), SHORT_SEQ="256", SHORT_BATCH="2", SHORT_STEPS="3", SEQ="512",
               BATCH="2", STEPS="1000", S2_TIME="5", LENGTHS="512,1k", RANDOM_LENGTHS="512", DEPTHS="0.5",
               SAMPLES="2", SEGMENT="256", EVAL_TIME="600")
    env.update(extra)
    return env


@pytest.mark.slow
def test_demo_scripts_run_end_to_end_on_cpu(tmp_path: Path) -> None:
    env = _env(tmp_path, NAMES="mamba2")
    done = subprocess.run(["bash", "bench/train/run_demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = (tmp_path / "runs" / "mamba2.log").read_text() if (tmp_path / "runs" / "mamba2.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    assert "failed" not in done.stdout, log
    run = tmp_path / "runs" / "mamba2"
    result = json.loads((run / "eval_passkey.json").read_text())
    assert result["lengths"] == [512, 1024] and len(result["cells"]) == 2
    assert (run / "random_filler" / "eval_passkey.json").exists()
    # stage 2's step count was fitted to S2_TIME (5 s) from stage 1's tokens/s: far below STEPS (1000)
    steps = json.loads((run / "train_config.json").read_text())["config"]["steps"]
    assert 10 <= steps < 1000, steps
    out = tmp_path / "out"
    for name in ("passkey.md", "mamba2_eval_passkey.json", "mamba2_eval_passkey.png", "mamba2_metrics.jsonl",
                 "mamba2_metrics_stage1.jsonl", "mamba2.log"):
        assert (out / name).exists(), name
    summary = (out / "passkey.md").read_text()
    assert "| mamba2 | 512 |" in summary and "mamba2:" in summary

    plot = subprocess.run([sys.executable, "bench/train/plot_demo.py", "--table", "--out", str(tmp_path / "p.png"),
                           f"mamba2={run / 'eval_passkey.json'}"], cwd=ROOT, capture_output=True, text=True)
    assert plot.returncode == 0, plot.stderr
    assert "| mamba2 |" in plot.stdout and (tmp_path / "p.png").stat().st_size > 0


def test_demo_one_rejects_an_unknown_layout_name(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "bench/train/demo_one.sh", "nosuch"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown layout name nosuch" in done.stderr
