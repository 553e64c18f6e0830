"""``bench/train/realtext/summarize.py`` on hand-made result files: a resumed run's time and a
model's passkey results spread over two evaluation calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _passkey(lengths: list[int], accuracy: dict[int, float], skipped: list[int]) -> dict:
    cells = [{"length": n, "depth": d, "samples": 4, "accuracy": accuracy[n], "accuracy_ci95": [0.15, 0.85]}
             for n in lengths for d in (0.1, 0.9)]
    return {"lengths": lengths, "depths": [0.1, 0.9], "cells": cells,
            "meta": {"samples_per_cell": 4, "skipped_lengths": skipped}}


def test_summary_adds_resumed_time_and_merges_passkey_files(tmp_path: Path) -> None:
    # steps 1-2 in a first call (time 10, 20 s), then resumed: step 3 at 5 s of the second call
    recs = [{"step": s, "loss": 3.0, "tokens": 100 * s, "tokens_per_s": 1000.0, "time": t}
            for s, t in ((1, 10.0), (2, 20.0), (3, 5.0))]
    (tmp_path / "ramba_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # the first call evaluated 4K and ran out of time for 16K; a second call evaluated 16K only
    (tmp_path / "ramba_eval_passkey_text.json").write_text(json.dumps(_passkey([4096], {4096: 0.75}, [16384])))
    (tmp_path / "ramba_eval_passkey_text_long.json").write_text(json.dumps(_passkey([16384], {16384: 0.825}, [])))
    done = subprocess.run([sys.executable, "bench/train/realtext/summarize.py", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| ramba | 3 | 300 | 25 | 10 |" in out  # 20 s of the first call + 5 s of the second; step 1 at 10 s
    assert "| 3.000 | - | - |" in out  # no passkey batches
    assert "| depth | 4k | 16k |" in out and "| 0.1 | 75 | 82.5 |" in out and "| 0.9 | 75 | 82.5 |" in out
    assert "interval of the lowest cell (4k, depth 0.1, 75%): 15-85%." in out
    assert "not evaluated within the time limit" not in out  # the later file evaluated the skipped length


def test_summary_of_a_fine_tune_separates_lm_and_passkey_batches(tmp_path: Path) -> None:
    """A passkey fine-tune mixes LM batches with passkey batches (those log "acc"): the train loss is the
    last LM batch's, and the passkey batches' exact match is shown by quarter of the run."""
    recs = []
    for step in range(1, 12):  # LM at steps 3, 6, 9; the last row (step 11) a passkey batch
        rec = {"step": step, "tokens": 100 * step, "tokens_per_s": 1000.0, "time": float(step)}
        if step % 3 == 0:
            rec.update(loss=2.5 + step / 100)
        else:  # 8 passkey batches, exact: 0, 0 | 0, 1 | 1, 1 | 1, 1 by quarter
            rec.update(loss=0.01, acc=float(step > 4))
        recs.append(rec)
    (tmp_path / "ramba_pk_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    done = subprocess.run([sys.executable, "bench/train/realtext/summarize.py", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "final LM train loss" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| ramba_pk |"))
    assert row.endswith("| 2.590 | - | 0 / 50 / 100 / 100% |"), row
    # one decimal where there is one (82.5, not a rounded 82)
