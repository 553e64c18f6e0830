"""Atomic training checkpoints.

Layout of a run directory::

    RUN/
      metrics.jsonl                      one JSON record per logged step / evaluation
      checkpoints/
        step_000200/                     a complete checkpoint (never modified after the rename)
          model/                         config.yaml + config.json + model.safetensors (loadable)
          optimizer.pt                   AdamW state
          trainer.json                   step, tokens, training config, carried-state counter
          rank_00000.pt ...              per-rank RNG states and carried mixer states
          COMPLETE                       written last, before the rename
        latest                           name of the newest complete checkpoint (replaced atomically)
      model/                             final weights (``hsa eval RUN`` reads these)

A checkpoint is written into ``checkpoints/.tmp-step_N-<pid>/``, every file fsynced, then renamed to
``step_N`` and only then is ``latest`` switched (write-temp-then-``os.replace``). Older checkpoints are
deleted only after the new one is in place, so a crash at any instant leaves the previous checkpoint
intact and ``latest`` pointing at a complete directory. Nothing is ever overwritten in place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

COMPLETE = "COMPLETE"
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories themselves (durable before the rename)."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a training step may draw from (Gumbel noise, dropout, Python/NumPy in plugins)."""
    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of ``run`` (``latest`` pointer, else the highest complete step)."""
    ckdir = run / "checkpoints"
    if not ckdir.is_dir():
        return None
    pointer = ckdir / LATEST
    if pointer.is_file():
        cand = ckdir / pointer.read_text().strip()
        if (cand / COMPLETE).is_file():
            return cand
    complete = sorted(p for p in ckdir.glob("step_*") if (p / COMPLETE).is_file())
    return complete[-1] if complete else None


def begin(run: Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step`` (main rank)."""
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    tmp = ckdir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(run: Path, tmp: Path, step: int, keep: int) -> Path:
    """Seal ``tmp`` as the checkpoint of ``step``: fsync, rename, switch ``latest``, prune old ones."""
    (tmp / COMPLETE).write_text(f"{step}\n")
    fsync_tree(tmp)
    ckdir = run / "checkpoints"
    final = ckdir / step_dir_name(step)
    if final.exists():
        # Same step already checkpointed (resumed exactly at a checkpoint): keep the existing one.
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, final)
    fd = os.open(ckdir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    write_text_atomic(ckdir / LATEST, final.name + "\n")
    complete = sorted(p for p in ckdir.glob("step_*") if (p / COMPLETE).is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckdir.glob(".tmp-*"):  # leftovers of crashed writes
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer.json").read_text())
