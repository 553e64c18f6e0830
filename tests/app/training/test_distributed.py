"""Data parallelism on CPU: ``torchrun`` with 2 gloo processes gives the 1-process loss curve at the
same global batch (DDP, and FSDP2 as an option), and resume works on the sharded run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hsa_app.training import train, train_losses

TINY = Path(__file__).with_name("tiny.yaml")

ARGS = ["--seq-len", "48", "--batch-size", "4", "--steps", "4", "--warmup", "2", "--checkpoint-every", "2",
        "--task-option", "num_symbols=16", "--no-progress", "--device", "cpu"]


def torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "hsa_cli", "train", str(TINY), "--out", str(out), *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    from hsa_app.training import TrainConfig

    from hsa_core.layout import load_spec

    run = tmp_path_factory.mktemp("single") / "run"
    cfg = TrainConfig(seq_len=48, batch_size=4, steps=4, warmup=2, checkpoint_every=2, device="cpu",
                      task_options={"num_symbols": 16})
    spec: dict[str, Any] = load_spec(TINY)
    train(cfg, spec, run, progress=False, log=lambda m: None)
    return train_losses(run)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp-keep-grouped", "fsdp-prefetch"])
def test_two_processes_match_one(tmp_path: Path, single: list[float], mode: str) -> None:
    out = tmp_path / mode
    flags = {"ddp": [], "fsdp": ["--fsdp"],
             "fsdp-keep-grouped": ["--fsdp", "--no-fsdp-reshard", "--fsdp-blocks-per-unit", "2"],
             "fsdp-prefetch": ["--fsdp", "--fsdp-prefetch", "2"]}[mode]
    proc = torchrun(out, *flags)
    assert proc.stdout.count("trained 4 steps") == 1  # only rank 0 reports
    losses = train_losses(out)
    assert len(losses) == 4
    # same global batch, same data, gradients averaged: equal up to float reduction order
    assert losses == pytest.approx(single, abs=1e-5, rel=0)
    ck = out / "checkpoints" / "step_0000004"
    for rank in ("rank_00000", "rank_00001"):  # per-rank RNG and carried states, no pickle
        assert (ck / f"{rank}.safetensors").is_file() and (ck / f"{rank}.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    if mode == "fsdp":
        # the gathered full checkpoint resumes (here: extends the run by 2 steps)
        torchrun(out, "--resume", "--steps", "6")  # (ARGS says --steps 4; the last one wins)
        assert len(train_losses(out)) == 6


@pytest.mark.parametrize(("prefetch", "forward", "backward"), [
    pytest.param(0, {}, {}, id="off"),
    pytest.param(1, {0: [1], 1: [2]}, {1: [0], 2: [1]}, id="next-one"),
    pytest.param(2, {0: [1, 2], 1: [2]}, {1: [0], 2: [1, 0]}, id="next-two"),
])
def test_fsdp_prefetch_links_each_unit_to_its_neighbours(monkeypatch: pytest.MonkeyPatch, prefetch: int,
                                                         forward: dict[int, list[int]],
                                                         backward: dict[int, list[int]]) -> None:
    """``--fsdp-prefetch N``: unit i prefetches units i+1..i+N in forward and i-1..i-N in backward
    (a one-process gloo group stands in for torchrun; the wiring is what is checked)."""
    import torch.distributed as dist
    from hsa_app.runtime.distributed import DistEnv, wrap_model
    from hsa_app.training.segments import SegmentedForward
    from torch.distributed.fsdp import FSDPModule

    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    calls: dict[str, dict[int, list[int]]] = {"forward": {}, "backward": {}}
    model = HSALanguageModel.from_spec(load_spec(TINY))
    layers = list(model.layers)
    assert len(layers) == 3

    def recorder(direction: str):
        def record(self: FSDPModule, modules: list[FSDPModule]) -> None:
            calls[direction][layers.index(self)] = [layers.index(m) for m in modules]
        return record

    monkeypatch.setattr(FSDPModule, "set_modules_to_forward_prefetch", recorder("forward"))
    monkeypatch.setattr(FSDPModule, "set_modules_to_backward_prefetch", recorder("backward"))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrap_model(SegmentedForward(model), DistEnv(world_size=2), fsdp=True, prefetch=prefetch)
    finally:
        dist.destroy_process_group()
    assert calls == {"forward": forward, "backward": backward}
