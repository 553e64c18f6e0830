"""``hsa train --profile-steps A:B``: the window is parsed strictly, and the profiled steps leave a trace
and an operator table per rank (CPU here; the device columns need CUDA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hsa_app.training import TrainConfig, train, train_losses
from hsa_app.training.profiling import ProfileWindow

TINY = Path(__file__).with_name("tiny.yaml")


def _cfg(**kw: Any) -> TrainConfig:
    base = dict(seq_len=48, batch_size=2, steps=4, warmup=1, checkpoint_every=0, task_options={"num_symbols": 16})
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize(("spec", "window"), [pytest.param("0:2", ProfileWindow(0, 2), id="from-the-start"),
                                              pytest.param("3:10", ProfileWindow(3, 10), id="later")])
def test_window_parses(spec: str, window: ProfileWindow) -> None:
    assert ProfileWindow.parse(spec) == window


@pytest.mark.parametrize("spec", [pytest.param("5", id="one-number"), pytest.param("2:2", id="empty"),
                                  pytest.param("3:1", id="backwards"), pytest.param("-1:2", id="negative"),
                                  pytest.param("a:b", id="not-numbers"), pytest.param("1:2:3", id="three")])
def test_bad_windows_say_what_is_allowed(spec: str) -> None:
    with pytest.raises(ValueError, match=r"--profile-steps"):
        ProfileWindow.parse(spec)


@pytest.mark.parametrize(("window", "steps"), [pytest.param(ProfileWindow(1, 3), 2, id="inside-the-run"),
                                               pytest.param(ProfileWindow(2, 50), 2, id="cut-by-the-run's-end")])
def test_profiled_steps_write_a_trace_and_a_table(tmp_path: Path, tiny_spec: dict[str, Any], window: ProfileWindow,
                                                  steps: int) -> None:
    said: list[str] = []
    train(_cfg(), tiny_spec, tmp_path / "run", progress=False, log=said.append, profile=window)
    prof = tmp_path / "run" / "profile"
    table = (prof / "rank0_ops.txt").read_text()
    assert table.startswith(f"rank 0: {steps} step(s) in ")
    assert "By host time:" in table and "aten::" in table
    trace = json.loads((prof / "rank0_trace.json").read_text())
    assert trace["traceEvents"]
    assert any("profile" in m and "rank0_ops.txt" in m for m in said)
    # profiling changes nothing the run computes
    train(_cfg(), tiny_spec, tmp_path / "plain", progress=False, log=lambda m: None)
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(tmp_path / "plain"), abs=1e-6)


def test_cli_rejects_a_bad_window_with_one_line(tmp_path: Path) -> None:
    from hsa_cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["train", str(TINY), "--seq-len", "48", "--batch-size", "2", "--steps", "2",
                                   "-t", "num_symbols=16", "--no-progress", "--profile-steps", "4:2",
                                   "--out", str(tmp_path / "run")], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert "--profile-steps A:B needs 0 <= A < B, got '4:2'" in res.output
    assert "Traceback" not in res.output
