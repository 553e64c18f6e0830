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
    # one decimal where there is one (82.5, not a rounded 82)
    assert "| depth | 4k | 16k |" in out and "| 0.1 | 75 | 82.5 |" in out and "| 0.9 | 75 | 82.5 |" in out
    assert "interval of the lowest cell (4k, depth 0.1, 75%): 15-85%." in out
    assert "not evaluated within the time limit" not in out  # the later file evaluated the skipped length
