"""``bench/ppl_join.py``: models evaluated apart by ``hsa eval ppl``, in one table and one plot, only
when they scored the same documents."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hsa_app.evaluation.perplexity import Bucket, PplCurve

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ppl_join", ROOT / "bench" / "ppl_join.py")
assert _spec is not None and _spec.loader is not None
ppl_join = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppl_join)


def _result(label: str, nll: float, documents: list[int] | None = None) -> dict[str, Any]:
    buckets = [Bucket(0, 2048, 100, nll), Bucket(2048, 4096, 100, nll - 0.1)]
    fine = [Bucket(0, 128, 10, nll), Bucket(128, 4096, 190, nll - 0.1)]
    curve = PplCurve(f"runs/{label}", label, buckets, fine, Bucket(0, 4096, 200, nll - 0.05), {"train_seq_len": 1024})
    return {"data": "d", "fingerprint": "f" * 8, "split": "validation", "lengths": [2048, 4096],
            "documents": documents or [0, 3], "evaluated_length": 4096, "models": [curve.to_dict()]}


def test_curves_round_trip_through_json() -> None:
    d = _result("ramba", 3.0)["models"][0]
    again = PplCurve.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d and math.isclose(again.overall.ppl, math.exp(2.95))


def test_join_writes_one_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result("ramba", 3.0)))
    b.write_text(json.dumps(_result("swa-hsa", 2.5)))
    assert ppl_join.main([str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    joined = json.loads((tmp_path / "both.json").read_text())
    assert [m["label"] for m in joined["models"]] == ["ramba", "swa-hsa"]
    assert (tmp_path / "both.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "swa-hsa" in out and f"{math.exp(2.4):.3f}" in out  # swa-hsa's 2k-4k bucket


@pytest.mark.parametrize(("other", "message"), [
    pytest.param(_result("swa-hsa", 2.5, documents=[0, 4]), "'documents' is [0, 4], not [0, 3]", id="other-documents"),
    pytest.param(_result("ramba", 2.5), "two models share a label", id="same-label"),
])
def test_join_refuses_what_cannot_share_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             other: dict[str, Any], message: str) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result("ramba", 3.0)))
    b.write_text(json.dumps(other))
    assert ppl_join.main([str(a), str(b), "--out", str(tmp_path / "both")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "both.json").exists()
