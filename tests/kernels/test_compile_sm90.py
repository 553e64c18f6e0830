"""Every Triton kernel the package launches compiles for Hopper (sm_90), down to the cubin, on CPU.

The CPU tests run kernels under the interpreter, which accepts code the compiler rejects (the H200 once
failed on ``Mismatched type for m between then block ... and else block``). Here the real wrappers run
on small CPU tensors with launches recorded instead of executed, and each recorded launch (its exact
argument types, constexprs, specialisations, num_warps / num_stages) is compiled by ``triton.compile``
for ``GPUTarget("cuda", 90, 32)``; see ``compile_check.py``. Each case runs in a subprocess with
``TRITON_INTERPRET`` unset (this process has it set by tests/conftest.py, and under it ``triton.jit``
gives interpreter objects the compiler cannot take).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import compile_check

ROOT = Path(__file__).resolve().parents[2]


def _run(case: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, compile_check.__file__, case], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"compile_check {case} crashed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("case", list(compile_check.CASES))
def test_compiles_for_sm90(case: str) -> None:
    out = _run(case)
    failed = [r for r in out["results"] if r["error"]]
    if failed:
        pytest.fail("\n\n".join(
            f"{r['kernel']} {r['options']}\n  constexprs {r['constexprs']}\n  signature {r['signature']}\n"
            f"  {r['error']}" for r in failed), pytrace=False)
    got = {r["kernel"] for r in out["results"]}
    assert got == set(out["want"]), f"launched {sorted(got)}, case expects {out['want']}"
    assert all(r["stage"] == "cubin" for r in out["results"])
    # Atomics only in the opt-in atomic-dQ backward (ATOMIC_DQ), and there the vectorized fp32 add; the
    # default kernels have none (deterministic).
    seen_atomic_dq = False
    for r in out["results"]:
        atomic = r["constexprs"].get("ATOMIC_DQ") == "True"
        seen_atomic_dq |= r["kernel"] == "_hsa_bwd_fused_kernel" and atomic
        want = compile_check.ATOMIC_PTX if atomic else []
        assert r["atomics"] == want, (r["kernel"], r["constexprs"], r["atomics"])
    assert seen_atomic_dq == (case in compile_check.ATOMIC_DQ_CASES)


def test_cases_cover_every_launched_kernel() -> None:
    """Each @triton.jit function that the package launches (``name[grid]``) is compiled by some case."""
    launched = compile_check.launched_kernels()
    assert len(launched) >= 9, sorted(launched)  # the inventory itself works
    covered = set().union(*(want for _, want in (make() for make in compile_check.CASES.values())))
    assert launched <= covered, f"kernels no case compiles: {sorted(launched - covered)}"
