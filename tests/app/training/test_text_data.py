"""``hsa train --data`` as a library: exact resume including the data position, validation loss,
passkey steps in text, and the checks between a run and its data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hsa_app.data import PrepareOptions, prepare
from hsa_app.data.errors import DataError
from hsa_app.runtime import checkpoint as ckpt
from hsa_app.training import TrainConfig, train, train_losses

from hsa_core.layout import load_spec

TINY = Path(__file__).with_name("tiny.yaml")


def _cfg(data: Path, **kw: Any) -> TrainConfig:
    base = dict(data=str(data), seq_len=48, batch_size=4, steps=6, lr=3e-3, warmup=2, checkpoint_every=2,
                log_every=1, eval_every=3, eval_samples=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def data(tmp_path: Path, corpus: Path) -> Path:
    prepare(PrepareOptions([str(corpus)], val_fraction=0.2), tmp_path / "data", progress=False)
    return tmp_path / "data"


@pytest.fixture
def spec() -> dict[str, Any]:
    return load_spec(TINY, overrides=["model.vocab_size=257"])


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("packing", ["concat", "document"])
def test_kill_and_resume_reproduces_losses_and_data_position(tmp_path: Path, data: Path, spec: dict[str, Any],
                                                             packing: str) -> None:
    quiet = dict(progress=False, log=lambda m: None)
    train(_cfg(data, packing=packing), spec, tmp_path / "full", **quiet)
    train(_cfg(data, packing=packing), spec, tmp_path / "cut", stop_after=5, **quiet)
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "step_0000004"
    train(_cfg(data, packing=packing), None, tmp_path / "cut", resume=True, **quiet)
    assert train_losses(tmp_path / "full") == pytest.approx(train_losses(tmp_path / "cut"), abs=1e-6, rel=0)
    full, cut = _records(tmp_path / "full"), _records(tmp_path / "cut")
    epochs = [r["epoch"] for r in full if "loss" in r]
    assert epochs == [r["epoch"] for r in cut if "loss" in r] and epochs == sorted(epochs) and epochs[0] > 0
    evals = [r["eval"] for r in full if "eval" in r]
    assert [e["val_loss"] for e in evals] == pytest.approx([r["eval"]["val_loss"] for r in cut if "eval" in r])
    assert set(evals[0]) == {"val_loss", "val_ppl"} and "acc" not in full[0]  # no exact match for LM batches
    saved = json.loads((tmp_path / "full" / "train_config.json").read_text())
    assert saved["config"]["task"] == "text" and saved["config"]["data_fingerprint"]
    assert (tmp_path / "full" / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()


def test_resume_refuses_data_that_changed(tmp_path: Path, data: Path, corpus: Path, spec: dict[str, Any]) -> None:
    quiet = dict(progress=False, log=lambda m: None)
    train(_cfg(data, eval_every=0), spec, tmp_path / "run", stop_after=2, **quiet)
    prepare(PrepareOptions([str(corpus)], val_fraction=0.5), data, progress=False, force=True)
    with pytest.raises(DataError, match=r"was trained on data with fingerprint .* \(prepared again or replaced\)"):
        train(_cfg(data, eval_every=0), None, tmp_path / "run", resume=True, **quiet)


def test_model_vocabulary_must_hold_the_tokenizer(tmp_path: Path, data: Path) -> None:
    small = load_spec(TINY)  # vocab 96 < 257 bytes
    with pytest.raises(DataError, match=r"model.vocab_size 96 is smaller than .* \(257, .*--set model.vocab_size=257"):
        train(_cfg(data), small, tmp_path / "run", progress=False, log=lambda m: None)


def test_passkey_steps_in_text(tmp_path: Path, data: Path, spec: dict[str, Any]) -> None:
    cfg = _cfg(data, seq_len=320, batch_size=2, steps=8, passkey_mix=0.5, eval_every=8, eval_samples=2,
               eval_lengths=[320], checkpoint_every=0)
    res = train(cfg, spec, tmp_path / "run", progress=False, log=lambda m: None)
    recs = [r for r in _records(tmp_path / "run") if "loss" in r]
    with_acc = [r for r in recs if "acc" in r]
    assert 0 < len(with_acc) < len(recs)  # some passkey steps, some LM steps (hash of the step)
    assert set(res.eval) == {"val_loss", "val_ppl", "passkey@320"}


@pytest.mark.slow  # ~18 s: two torchrun processes
def test_two_processes_match_one_on_text(tmp_path: Path, data: Path, spec: dict[str, Any]) -> None:
    """torchrun with 2 gloo processes (FSDP2, whose collectives need the same number of forwards on
    every rank, also in the validation pass) gives the 1-process losses and validation loss."""
    import os
    import subprocess
    import sys

    single = tmp_path / "single"
    train(_cfg(data, steps=4, eval_every=4, eval_samples=3, device="cpu"), spec, single, progress=False,
          log=lambda m: None)
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "hsa_cli",
           "train", str(TINY), "--data", str(data), "--set", "model.vocab_size=257", "--out", str(out), "--fsdp",
           "--seq-len", "48", "--batch-size", "4", "--steps", "4", "--lr", "3e-3", "--warmup", "2",
           "--checkpoint-every", "2", "--eval-every", "4", "--eval-samples", "3", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert train_losses(out) == pytest.approx(train_losses(single), abs=1e-5, rel=0)
    val = [r["eval"]["val_loss"] for r in _records(out) if "eval" in r]
    assert val == pytest.approx([r["eval"]["val_loss"] for r in _records(single) if "eval" in r], abs=1e-5)
