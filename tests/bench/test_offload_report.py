"""``bench/offload/report.py``: pools offloaded passkey files and tabulates each run's footprint,
with the host -> device gathers when the file has them (older files show dashes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from hsa_app.evaluation import evaluate
from hsa_app.evaluation.report import write_json
from hsa_app.tasks import make_task

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("offload_report", ROOT / "bench" / "offload" / "report.py")
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_summary_pools_cells_and_shows_the_gathers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(load_spec(ROOT / "tests" / "app" / "training" / "tiny.yaml")).eval()
    task = make_task("passkey", vocab_size=96, min_gap=16)
    result = evaluate(model, task, [200], [0.5], samples=2, segment_len=40, device="cpu", offload=True)
    result.meta["offload"] = True  # as `hsa eval` records it (run_eval)
    new = write_json(result, tmp_path / "new.json")
    old_doc = json.loads(new.read_text())
    for fp in old_doc["meta"]["footprint"].values():
        del fp["gathers"]  # as written before the gather counters existed
    old = tmp_path / "old.json"
    old.write_text(json.dumps(old_doc))

    pooled, rows = report.merge([new, old])
    assert pooled.cell(200, 0.5).samples == 4  # both files' samples of the same cell
    text = report.summary(pooled, rows, None)
    new_row = next(line for line in text.splitlines() if "/new.json" in line)
    old_row = next(line for line in text.splitlines() if "/old.json" in line)
    gathered = result.meta["footprint"]["200"]["gathers"]
    assert gathered["calls"] > 0 and f"{gathered['bytes'] / 2**30:.2f}" in new_row
    assert old_row.rstrip().endswith("- | - | - |")
    assert "gathered GiB" in text
    assert "| True | device |" in new_row  # no offload_landmarks recorded: the landmarks were on the GPU
    host_doc = json.loads(new.read_text())
    host_doc["meta"]["offload_landmarks"] = "host"
    host = tmp_path / "host.json"
    host.write_text(json.dumps(host_doc))
    _, rows = report.merge([host])
    assert "| True | host |" in report.summary(pooled, rows, None)
