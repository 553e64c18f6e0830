"""``bench/passkey_misses.py``: misses by key split and the misses two models share, on samples drawn
again exactly as ``hsa eval passkey`` drew them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hsa_app.data import PrepareOptions, open_data, prepare

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("passkey_misses", ROOT / "bench" / "passkey_misses.py")
assert _spec is not None and _spec.loader is not None
misses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(misses)


class DigitGroups:
    """A stand-in tokenizer: id ``n`` decodes to the decimal text of ``n`` (id 1000 to a lone space)."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(" " if i == 1000 else str(i) for i in ids)


def test_key_split_counts_the_digits_of_each_token() -> None:
    assert misses.key_split(DigitGroups(), [1000, 72, 555]) == "2+3"
    assert misses.key_split(DigitGroups(), [7, 2555]) == "1+4"


def _corpus(root: Path) -> Path:
    """Eight short documents of words and numbers."""
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}: the memory keeps {i * 37} chunks exactly. " * 30)
    return corpus


def _result(path: Path, missed: list[list[int]], samples: int = 6, seed: int = 1234) -> Path:
    cells = [{"length": 512, "depth": d, "samples": samples, "accuracy": 1 - len(m) / samples, "missed": m}
             for d, m in zip((0.2, 0.8), missed)]
    path.write_text(json.dumps({"task": "passkey", "lengths": [512], "depths": [0.2, 0.8], "cells": cells,
                                "task_options": {"filler": "text:x", "split": "validation", "digits": 5,
                                                 "min_gap": 32, "seed": 0, "filler_eos": "left out"},
                                "meta": {"seed": seed}}))
    return path


def test_misses_by_split_and_shared_misses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(PrepareOptions([str(_corpus(tmp_path))], val_fraction=0.5), tmp_path / "data", progress=False)
    a = _result(tmp_path / "a.json", [[0, 3], [5]])
    b = _result(tmp_path / "b.json", [[3], [1, 5]])
    out = tmp_path / "m.json"
    assert misses.main([str(a), str(b), "--filler", f"text:{tmp_path / 'data'}", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    # the byte tokenizer: a space, then one token per digit
    assert got["by_split"] == {"1+1+1+1+1": {"samples": 12, "missed": [3, 3]}}
    assert got["shared_misses"] == 2  # sample 3 of the first cell, sample 5 of the second
    assert got["expected_if_independent"] == pytest.approx(6 * (2 / 6) * (1 / 6) * 2, abs=0.005)
    assert "| 1+1+1+1+1 | 12 | 3 (25.0%) | 3 (25.0%) |" in capsys.readouterr().out
    # the samples behind the indices are the evaluation's: a cell drawn twice is the same
    data = open_data(tmp_path / "data")
    from hsa_app.data.passkey import TextPasskeyTask

    task = TextPasskeyTask(data.tokenizer(), data.split("validation"), digits=5, min_gap=32)
    assert misses.cell_splits(task, data.tokenizer(), 512, 0.2, 0, 6, 1234) == ["1+1+1+1+1"] * 6


def test_results_of_other_seeds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _result(tmp_path / "a.json", [[0], []])
    b = _result(tmp_path / "b.json", [[0], []], seed=7)
    assert misses.main([str(a), str(b), "--filler", "text:nowhere"]) == 2
    assert "other task options, seed or cells" in capsys.readouterr().err
