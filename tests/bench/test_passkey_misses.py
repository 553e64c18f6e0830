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
    keys = misses.cell_keys(task, 512, 0.2, 0, 6, 1234)
    assert keys == misses.cell_keys(task, 512, 0.2, 0, 6, 1234)
    assert [misses.key_split(data.tokenizer(), k) for k in keys] == ["1+1+1+1+1"] * 6


def test_wrong_tokens_says_what_was_read_instead() -> None:
    tok = DigitGroups()
    key = [1000, 7, 2, 5, 5, 3]
    assert misses.wrong_tokens(tok, key, key) == []
    # 2 and 7 swapped: the key's digits out of place; a 9 the key does not hold; a space for a digit
    assert misses.wrong_tokens(tok, key, [1000, 2, 7, 5, 9, 1000]) == [
        (1, "key digit, other position"), (2, "key digit, other position"), (4, "other digit"), (5, "not a digit")]


def test_missed_answers_are_tabled_by_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(PrepareOptions([str(_corpus(tmp_path))], val_fraction=0.5), tmp_path / "data", progress=False)
    data = open_data(tmp_path / "data")
    from hsa_app.data.passkey import TextPasskeyTask

    task = TextPasskeyTask(data.tokenizer(), data.split("validation"), digits=5, min_gap=32)
    first, second = misses.cell_keys(task, 512, 0.2, 0, 6, 1234), misses.cell_keys(task, 512, 0.8, 1, 6, 1234)
    swapped = list(first[0])
    swapped[1], swapped[2] = swapped[2], swapped[1]  # wrong only if the two digits differ
    path = _result(tmp_path / "a.json", [[0], [4]])
    run = json.loads(path.read_text())
    run["cells"][0]["missed_answers"] = [swapped]
    space = int(data.tokenizer().encode(" ")[0])
    run["cells"][1]["missed_answers"] = [[*second[4][:5], space]]  # a space read for the last digit
    path.write_text(json.dumps(run))
    out = tmp_path / "m.json"
    assert misses.main([str(path), "--filler", f"text:{tmp_path / 'data'}", "--out", str(out)]) == 0
    wrong = json.loads(out.read_text())["wrong_tokens"][f"{tmp_path.name}/a.json"]
    expected = ([{"position": 1, "kind": "key digit, other position", "count": 1},
                 {"position": 2, "kind": "key digit, other position", "count": 1}] if swapped != first[0] else [])
    assert wrong == [*expected, {"position": 5, "kind": "not a digit", "count": 1}]
    assert "wrong answer tokens by position" in capsys.readouterr().out


def test_results_of_other_seeds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _result(tmp_path / "a.json", [[0], []])
    b = _result(tmp_path / "b.json", [[0], []], seed=7)
    assert misses.main([str(a), str(b), "--filler", "text:nowhere"]) == 2
    assert "other task options, seed or cells" in capsys.readouterr().err
