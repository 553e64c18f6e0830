"""``bench/offload/h200_run.sh``'s long stages on CPU, with a stand-in ``hsa`` that records its calls:
the 16M and 64M stages spread their samples over the GPUs (one process per GPU, its own seed and
device) and copy every result to ``$OUT``. Lengths of millions of tokens cannot run here; the shell
logic around them can, and a slip there would cost device time."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_HSA = """#!/usr/bin/env bash
out=""; prev=""
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
echo "GPU=$CUDA_VISIBLE_DEVICES $*" >> "$CALLS"
mkdir -p "$out"
echo '{"cells": [], "meta": {}}' > "$out/eval_passkey.json"
"""


def _run(tmp_path: Path, stage: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "hsa").write_text(FAKE_HSA)
    (bin_dir / "hsa").chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DEVICE_ENV="/dev/null",
               CALLS=str(calls), OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), RUN="model", GPUS="2",
               SEED="100")
    env.update(extra)
    done = subprocess.run(["bash", "bench/offload/h200_run.sh", stage], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return done, sorted(calls.read_text().splitlines()) if calls.exists() else []


def _opt(call: str, name: str) -> str:
    words = call.split()
    return words[words.index(name) + 1]


def test_16m_spreads_samples_over_the_gpus_with_their_own_seeds(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, "16m", SAMPLES="3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c.split()[0] for c in calls] == ["GPU=0", "GPU=1"]
    assert [_opt(c, "--seed") for c in calls] == ["100", "101"]
    assert {_opt(c, "--samples") for c in calls} == {"2"}  # ceil(3 / 2) per GPU
    assert all(_opt(c, "--lengths") == "16m" and "--offload" in c for c in calls)
    out = sorted(p.name for p in (tmp_path / "out").glob("passkey_*.json"))
    assert out == ["passkey_16m_dall_s100_g0.json", "passkey_16m_dall_s100_g1.json"]
    assert json.loads((tmp_path / "out" / out[0]).read_text())["cells"] == []


def test_64m_defaults_to_one_sample_per_gpu(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, "64m", DEPTHS="0.5", FORCE="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(_opt(c, "--seed"), _opt(c, "--samples"), _opt(c, "--depths")) for c in calls] == [
        ("100", "1", "0.5"), ("101", "1", "0.5")]


def test_gpu_ids_pick_the_gpus_a_stage_runs_on(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, "16m", SAMPLES="1", GPUS="1", GPU_IDS="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c.split()[0] for c in calls] == ["GPU=1"]  # the other GPU is left to another job


def test_train_sends_the_weights_back_in_parts_that_join_again(tmp_path: Path) -> None:
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    weights = os.urandom(31_000_000)  # over the device tool's 16 MB per file: three parts of <= 15 MB
    (model / "model.safetensors").write_bytes(weights)
    for name in ("config.json", "config.yaml"):
        (model / name).write_text("{}")
    done, _ = _run(tmp_path, "train", RUN=str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    parts = sorted((tmp_path / "out" / "model").glob("model.safetensors.part*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 15_000_000 for p in parts)
    # a fresh machine gets the parts carried (no weights file) and `train` joins them
    carried = tmp_path / "carried"
    (carried / "model").mkdir(parents=True)
    for p in [*parts, model / "config.json", model / "config.yaml"]:
        (carried / "model" / p.name).write_bytes(p.read_bytes())
    done, _ = _run(tmp_path, "train", RUN=str(carried), OUT=str(tmp_path / "out2"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (carried / "model" / "model.safetensors").read_bytes() == weights


def test_every_stage_joins_carried_parts(tmp_path: Path) -> None:
    """A model's later cells on another machine: the carried parts are joined before any stage reads them."""
    model = tmp_path / "carried" / "model"
    model.mkdir(parents=True)
    weights = os.urandom(2_000_000)
    for i, start in enumerate(range(0, len(weights), 900_000)):
        (model / f"model.safetensors.part{i:02d}").write_bytes(weights[start:start + 900_000])
    (model / "config.json").write_text("{}")
    done, calls = _run(tmp_path, "64m", RUN=str(tmp_path / "carried"), FORCE="1", GPUS="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (model / "model.safetensors").read_bytes() == weights
    assert len(calls) == 1  # and the stage ran


def test_result_names_have_no_commas(tmp_path: Path) -> None:
    """The device tool refuses to send back a file whose name has a comma (two came back only inside a tarball)."""
    done, _ = _run(tmp_path, "16m", SAMPLES="2", DEPTHS="0.1,0.9")
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(p.name for p in (tmp_path / "out").glob("passkey_*.json"))
    assert names == ["passkey_16m_d0.1-0.9_s100_g0.json", "passkey_16m_d0.1-0.9_s100_g1.json"]


def test_footprint_measures_both_references_at_batch_one_after_a_warm_up_cell(tmp_path: Path) -> None:
    """The bars compare 64M (batch 1, 64K segments) with 64K offloaded and with 1M on the GPU: both at
    batch 1 and the stage's segment length, each after a shorter cell that compiles the kernels."""
    done, calls = _run(tmp_path, "footprint")
    assert done.returncode == 0, done.stdout + done.stderr
    got = [(_opt(c, "--lengths"), _opt(c, "--batch-tokens"), _opt(c, "--segment-len"), "--no-offload" in c)
           for c in calls]
    assert sorted(got) == [("4k,64k", "65536", "65536", False), ("64k,1m", "1048576", "65536", True)]
    out = sorted(p.name for p in (tmp_path / "out").glob("passkey_*.json"))
    assert out == ["passkey_fp64k.json", "passkey_ref1m_gpu_b1.json"]


def test_bar_runs_every_cell_of_the_bars_for_one_model(tmp_path: Path) -> None:
    """``bar``: the carried (or trained) model, then 4K-1M, 16M and 64M at three depths x 4 samples, the
    footprint references and the report, all on that one model."""
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    for name in ("config.json", "config.yaml"):
        (model / name).write_text("{}")
    done, calls = _run(tmp_path, "bar", RUN=str(tmp_path / "run"), GPUS="1")
    assert "!!! bar" not in done.stdout, done.stdout + done.stderr
    got = sorted((_opt(c, "--lengths"), _opt(c, "--depths")) for c in calls)
    assert got == [("16m", "0.1,0.5,0.9"), ("4k,64k", "0.5"), ("4k,64k,1m", "0.1,0.5,0.9"), ("64k,1m", "0.5"),
                   ("64m", "0.1,0.5,0.9")]
    samples = {_opt(c, "--lengths"): _opt(c, "--samples") for c in calls}
    assert [samples[n] for n in ("4k,64k,1m", "16m", "64m")] == ["4", "4", "4"]  # per depth, one process
    assert all(str(tmp_path / "run") in c for c in calls)  # every cell from the one model
    assert (tmp_path / "out" / "passkey_64m_d0.1-0.5-0.9_s100_g0.json").is_file()


def test_profile_runs_with_or_without_the_module_hooks(tmp_path: Path) -> None:
    """``profile`` times per module by default; MODULES=0 drops those hooks (they slow what they time)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n')  # records, runs nothing
    (bin_dir / "python3").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    for modules, want in (("1", True), ("0", False)):
        done, calls = _run(tmp_path, "profile", PATH=path, GPUS="1", MODULES=modules)
        assert done.returncode == 0, done.stdout + done.stderr
        (call,) = [c for c in calls if "profile_prefill.py" in c]
        assert call.split()[:3] == ["bench/offload/profile_prefill.py", "model/model", "64m"]
        assert ("--modules" in call.split()) is want and _opt(call, "--period") == "31"
