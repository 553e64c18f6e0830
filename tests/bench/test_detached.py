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


def test_stop_ends_the_job_and_what_it_started_but_not_the_caller(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # the job starts a background child of its own, as run_all.sh starts lm_one.sh
    job = ["--", "bash", "-c", f'sleep 300 & echo $! > "{child_pid}"; echo started; wait']
    assert _call(tmp_path, "pipe", "1", *job).returncode == 3
    stopped = _call(tmp_path, "pipe", "--stop")
    assert stopped.returncode == 0 and "pipe stopped" in stopped.stdout
    pid = int(child_pid.read_text())
    for _ in range(50):  # the child was in the job's process group
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    else:
        raise AssertionError(f"the job's child {pid} outlived --stop")
    followed = _call(tmp_path, "pipe", "5")  # a follower sees it ended, not "still running"
    assert followed.returncode == 143 and "finished with exit status 143" in followed.stdout
    assert "had already ended" in _call(tmp_path, "pipe", "--stop").stdout
    assert _call(tmp_path, "never", "--stop").returncode == 2
    assert _call(tmp_path, "pipe", "--stop", "x").returncode == 2
