"""Keeps the CPU bar honest at test size: a tiny Mamba2 + HSA model trained by ``train`` for about
a minute of CPU learns passkey retrieval far above chance (bench/results/cpu_passkey.md has the full
CPU run and its extrapolation)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hsa_app.evaluation import evaluate
from hsa_app.training import TrainConfig, train
from hsa_app.training.trainer import task_for_spec

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel

LAYOUT = Path(__file__).with_name("tiny_passkey.yaml")


@pytest.mark.slow
def test_tiny_model_learns_passkey(tmp_path: Path) -> None:
    cfg = TrainConfig(task="passkey", task_options={"num_symbols": 32}, seq_len=64, batch_size=32, steps=300,
                      lr=3e-3, warmup=20, checkpoint_every=0, seed=0)
    res = train(cfg, load_spec(LAYOUT), tmp_path / "run", progress=False, log=lambda m: None)
    chance_loss = math.log(32)  # uniform over the 32 passkey symbols
    assert res.final_loss < 0.6 * chance_loss, res.final_loss
    model = HSALanguageModel.from_pretrained(tmp_path / "run" / "model")
    task = task_for_spec(cfg, model.spec)
    out = evaluate(model, task, [64], [None], samples=64, seed=99, device="cpu")
    cell = out.cells[0]
    # chance: 1/32 per answer token, (1/32)^4 per passkey
    assert cell.token_accuracy > 0.3, cell
