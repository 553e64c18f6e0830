"""``bench/results/`` keeps current tables, plots, evaluation JSON and commands; raw logs and training curves
stay on the machine that ran them, and git history keeps the old ones (``bench/results/README.md``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAW_SUFFIXES = (".log", ".jsonl")


def _tracked_results() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "bench/results"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_results_hold_no_raw_logs() -> None:
    raw = [p for p in _tracked_results() if p.endswith(RAW_SUFFIXES)]
    assert not raw, f"raw logs in bench/results (keep the summary, plot and JSON; see bench/results/README.md): {raw}"


def test_every_results_folder_is_indexed() -> None:
    """A new results folder gets a row in the index, so a reader finds it."""
    index = (ROOT / "bench/results/README.md").read_text()
    folders = {Path(p).parts[2] for p in _tracked_results() if len(Path(p).parts) > 3}
    assert folders, "no results folders found"
    missing = sorted(f for f in folders if f"{f}/" not in index)
    assert not missing, f"bench/results/README.md does not list: {missing}"
