"""``bench/detached.sh``: a job that outlives one device command, followed across calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _call(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETACHED_DIR=str(tmp_path / "d"), TAIL="5")
    return subprocess.run(["bash", "bench/detached.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_job_is_started_once_and_followed_until_it_ends(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = ["--", "bash", "-c", f'echo started; while [ ! -f "{gate}" ]; do sleep 0.2; done; echo done; exit 7']
    first = _call(tmp_path, "lm", "1", *job)
    assert first.returncode == 3, first.stdout + first.stderr  # still running: the caller returns
    assert "started" in first.stdout and "still running" in first.stdout
    again = _call(tmp_path, "lm", "1", *job)  # the same command again only follows the first job
    assert again.returncode == 3 and "was started before" in again.stderr
    gate.touch()
    last = _call(tmp_path, "lm", "30")
    assert last.returncode == 7, last.stdout + last.stderr  # the job's own exit status
    assert "done" in last.stdout and "finished with exit status 7" in last.stdout
    assert (tmp_path / "d" / "lm.log").read_text().splitlines() == ["started", "done"]


def test_usage_errors(tmp_path: Path) -> None:
    assert _call(tmp_path, "lm").returncode == 2
    assert _call(tmp_path, "lm", "ten").returncode == 2
    unknown = _call(tmp_path, "never", "1")
    assert unknown.returncode == 2 and "no job never was started here" in unknown.stderr
    assert _call(tmp_path, "lm", "1", "--").returncode == 2
