"""``hsa_app.evaluation.report``: the heatmap leaves unmeasured cells blank instead of drawing them as 0%."""

from __future__ import annotations

import math
from pathlib import Path

from hsa_app.evaluation.core import CellResult, EvalResult
from hsa_app.evaluation.report import heatmap, heatmap_value


def test_a_cell_without_samples_is_blank_not_zero(tmp_path: Path) -> None:
    measured = CellResult(65536, 0.5, 4, 0.75, 0.8, 1.0)
    missing = CellResult(65536, 0.1, 0, 0.0, 0.0, 0.0)  # a pooled grid's cell that no file measured
    assert heatmap_value(measured) == 75.0
    assert math.isnan(heatmap_value(missing))
    result = EvalResult("passkey", {}, [65536], [0.1, 0.5], [missing, measured], {"train_seq_len": 4096})
    png = heatmap(result, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
