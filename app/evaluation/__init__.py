"""Evaluation of trained models on synthetic tasks far beyond the training length.

* :func:`evaluate` — exact-match accuracy over a (length x depth) grid, segment-wise prefill with a
  carried cache (bounded activation memory at any length).
* :func:`run_eval` — ``hsa eval TASK RUN``: load the run's model, evaluate, write
  ``RUN/eval_<task>.json`` and the heatmap ``RUN/eval_<task>.png``.
"""

from __future__ import annotations

from .core import CellResult, EvalResult, evaluate, predict_answers
from .report import format_length, heatmap, interval_note, parse_depths, parse_lengths, rich_table, write_json
from .runner import model_dir_of, run_eval

__all__ = [
    "CellResult", "EvalResult", "evaluate", "format_length", "heatmap", "interval_note", "model_dir_of",
    "parse_depths", "parse_lengths", "predict_answers", "rich_table", "run_eval", "write_json",
]
