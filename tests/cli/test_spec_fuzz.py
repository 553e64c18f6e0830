"""Property-based bar for every command that reads a spec (``validate``, ``build`` on meta and cpu,
``train``, ``demo``): never a traceback, an undocumented exit code, more than one error line, more
than 10 s or more than 2 GiB. The cases run in ``fuzz_specs.py`` in a subprocess with a capped address
space (see its docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fuzz_specs.py")


@pytest.mark.slow  # ~26 s; tests/cli/test_validate.py holds the fast checks of the same errors
def test_generated_specs_and_set_values_never_crash_hang_or_blow_up() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env,
                          cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-6000:])
    assert proc.stdout.strip().splitlines()[-1].startswith("ok")
    # the run reached every command, and valid cases among them (not only early spec errors)
    for command in ("validate", "build", "build-cpu", "train", "demo"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{command}:"))
        assert "{0: " in line, line
