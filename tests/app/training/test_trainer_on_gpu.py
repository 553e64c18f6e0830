"""The training step on CUDA never waits for the GPU: the host can prepare the next batch while the
step runs (the cause of the two-GPU scaling found on the H200: bench/results/h200_model/README.md,
run 5). ``torch.cuda.set_sync_debug_mode("error")`` turns any synchronising call (``.item()``, a copy
from pageable memory, ``nonzero``) into an error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_app.runtime.distributed import init_distributed
from hsa_app.training import TrainConfig
from hsa_app.training.trainer import _Trainer, default_model_factory

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("task_options", [pytest.param({"num_symbols": 16}, id="passkey")])
def test_a_training_step_never_waits_for_the_gpu(tmp_path: Path, tiny_spec: dict[str, Any],
                                                 task_options: dict[str, Any]) -> None:
    cfg = TrainConfig(seq_len=256, batch_size=2, steps=4, warmup=1, checkpoint_every=0, device="cuda",
                      task_options=task_options)
    trainer = _Trainer.setup(cfg, tiny_spec, tmp_path / "run", resume=False, factory=default_model_factory,
                             env=init_distributed("cuda"), say=lambda m: None, t_start=time.perf_counter(),
                             resume_steps=None)
    first = trainer.step(0, trainer.device_batch(0)).resolve()  # compiles and autotunes (those may wait)
    batch = trainer.device_batch(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = trainer.step(1, batch)
        following = trainer.device_batch(2)  # the next batch: page-locked, asynchronous copy
    finally:
        torch.cuda.set_sync_debug_mode("default")
    second = pending.resolve()
    assert following.input_ids.is_cuda
    assert torch.isfinite(torch.tensor([first.loss, second.loss, second.grad_norm])).all()
