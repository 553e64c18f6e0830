"""``hsa train SPEC --data DIR``: the language-model data source the trainer draws its batches from.

:class:`TextData` stands where a synthetic task stands in the trainer (``global_batch``,
``periodic_eval``, ``options``, ``min_length``): batch ``step`` is a pure function of the step
(:mod:`hsa_app.data.sampler`), so checkpoints need no data state and a resumed run reads exactly the sequences an
uninterrupted one reads. The data's fingerprint is recorded in the training config at the start;
resuming against different data (prepared again, or another folder) is refused, and so is data
prepared with another tokenizer than a run started with ``--init-from``.

Loss: every real next-token target of the packed sequences (``loss_on`` is ignored). With
``passkey_mix = f > 0`` a fraction ``f`` of the steps (chosen by a hash of ``(seed, step)``) are
natural-text passkey batches (:mod:`hsa_app.data.passkey`, filler from the training split) with the loss on the
answer only, each normalised over its own tokens (so a passkey step weighs as much as an LM step).
"""

from __future__ import annotations

import math
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.errors import EXIT_USAGE, DataError
from ..data.passkey import TextPasskeyTask
from ..data.sampler import PackedSequences
from ..data.shards import TokenData, open_data
from ..data.tokenizer import RUN_TOKENIZER, file_fingerprint, find_run_tokenizer
from ..tasks.base import IGNORE_INDEX, TaskBatch


class TextData:
    """Batches of packed sequences (and optional passkey steps) for the trainer."""

    name = "text"

    def __init__(self, data: TokenData, cfg: Any, spec: Mapping[str, Any]) -> None:
        self.data = data
        self.cfg = cfg
        vocab = int(spec["model"]["vocab_size"])
        if vocab < data.vocab_size:
            raise DataError(f"model.vocab_size {vocab:,} is smaller than the vocabulary of the data's tokenizer "
                            f"({data.vocab_size:,}, {data.tokenizer_path}); use --set model.vocab_size="
                            f"{data.vocab_size}")
        self.train = PackedSequences(data.split("train"), cfg.seq_len, cfg.packing, cfg.seed, pad_id=data.eos_id)
        val = data.split("validation")
        self.val = (PackedSequences(val, cfg.seq_len, cfg.packing, cfg.seed, pad_id=data.eos_id)
                    if val.num_tokens > cfg.seq_len else None)
        self.passkey: TextPasskeyTask | None = None
        if cfg.passkey_mix > 0:
            sizes = [m["chunk_size"] for m in spec.get("memories", {}).values()]
            opts = dict(cfg.task_options)
            self.passkey = TextPasskeyTask(data.tokenizer(), data.split("train"), digits=int(opts.get("digits", 5)),
                                           min_gap=int(opts.get("min_gap") or (2 * min(sizes) if sizes else 128)),
                                           seed=int(opts.get("seed", 0)), source=str(data.root))
            if cfg.seq_len < self.passkey.min_length():
                raise DataError(f"--seq-len {cfg.seq_len} is shorter than a passkey sample needs "
                                f"({self.passkey.min_length()})", EXIT_USAGE)
        self.options: dict[str, Any] = {
            "data": str(data.root), "fingerprint": data.fingerprint, "tokenizer_sha256": data.tokenizer_sha256,
            "packing": cfg.packing, "train_windows": len(self.train),
            "validation_windows": len(self.val) if self.val else 0, "passkey_mix": cfg.passkey_mix}

    def min_length(self) -> int:
        return 2

    def is_passkey_step(self, step: int) -> bool:
        if self.passkey is None:
            return False
        u = zlib.crc32(f"mix:{self.cfg.seed}:{step}".encode()) / 2**32
        return u < self.cfg.passkey_mix

    def global_batch(self, step: int) -> TaskBatch:
        """The global batch of ``step``: sequences ``step * B .. + B`` of the sampler's order (or a
        passkey batch on a passkey step)."""
        cfg = self.cfg
        if self.passkey is not None and self.is_passkey_step(step):
            from .segments import step_seed

            return self.passkey.sample(cfg.batch_size, cfg.seq_len, step_seed(cfg.seed, step, 1))
        return self.train.batch(step * cfg.batch_size, cfg.batch_size)

    def log_fields(self, step: int) -> dict[str, Any]:
        """Extra fields of the metrics record after ``step`` steps: the data position."""
        pos = self.train.position(step * self.cfg.batch_size)
        return {"epoch": round(pos.epochs, 6)}

    @torch.no_grad()
    def periodic_eval(self, wrapped: nn.Module, env: Any, amp: torch.dtype | None) -> dict[str, float]:
        """Validation loss (and perplexity) over ``eval_samples`` fixed validation windows, spread
        evenly over the split; with a passkey mix also passkey exact match at ``eval_lengths``."""
        from ..runtime.distributed import all_reduce_sum

        cfg = self.cfg
        out: dict[str, float] = {}
        was = wrapped.training
        wrapped.eval()
        try:
            if self.val is not None:
                n = min(cfg.eval_samples, len(self.val))
                picks = [int(i) for i in torch.linspace(0, len(self.val) - 1, n).round().long().tolist()]
                per_rank = math.ceil(n / env.world_size)  # same count on every rank (FSDP collectives)
                stats = torch.zeros(2, dtype=torch.float64)
                for j in range(per_rank):
                    k = env.rank + j * env.world_size
                    weight = 1.0 if k < n else 0.0
                    inputs, targets = self.val.window(picks[min(k, n - 1)])
                    ids = torch.from_numpy(inputs)[None].to(env.device)
                    tgt = torch.from_numpy(targets)[None].to(env.device)
                    with _autocast(env.device, amp):
                        logits = wrapped(ids, cache=None, passthrough=True).logits
                    s, c = nll_sum(logits, tgt)
                    stats += weight * torch.tensor([s, c], dtype=torch.float64)
                if env.distributed:
                    stats = all_reduce_sum(stats.to(env.device), env).cpu()
                loss = float(stats[0] / max(1.0, float(stats[1])))
                out["val_loss"] = loss
                out["val_ppl"] = math.exp(min(loss, 50.0))
            if self.passkey is not None:
                from ..evaluation.core import evaluate
                from .segments import EvalAdapter as _EvalAdapter

                reduce = (lambda t: all_reduce_sum(t.to(env.device), env).cpu()) if env.distributed else None
                lengths = cfg.eval_lengths or [cfg.seq_len]
                res = evaluate(_EvalAdapter(wrapped), self.passkey, lengths, [None], samples=cfg.eval_samples,
                               seed=cfg.seed + 10_000, segment_len=cfg.eval_segment_len, device=env.device,
                               autocast_dtype=amp, rank=env.rank, world_size=env.world_size, reduce=reduce)
                out.update({f"passkey@{k}": v for k, v in res.by_length().items()})
        finally:
            wrapped.train(was)
        return out


def nll_sum(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 2048) -> tuple[float, float]:
    """Summed cross-entropy (fp32) and the number of targets, over ``(B, T, V)`` logits and ``(B, T)``
    targets (``IGNORE_INDEX`` skipped), ``chunk`` positions at a time (bounded fp32 copies)."""
    total, count = 0.0, 0.0
    for s in range(0, logits.shape[1], chunk):
        lg = logits[:, s:s + chunk].float()
        tg = targets[:, s:s + chunk]
        total += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=IGNORE_INDEX,
                                       reduction="sum"))
        count += float((tg != IGNORE_INDEX).sum())
    return total, count


def _autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    import contextlib

    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def text_data_for(cfg: Any, spec: Mapping[str, Any], run: Path, is_main: bool) -> TextData:
    """Open ``cfg.data`` for a run: check it against the run (fingerprint on resume, tokenizer of an
    ``--init-from`` run), record its fingerprint in ``cfg`` and copy its tokenizer to
    ``RUN/tokenizer.json`` (main rank)."""
    data = open_data(cfg.data)
    if cfg.data_fingerprint is not None and cfg.data_fingerprint != data.fingerprint:
        raise DataError(f"{run} was trained on data with fingerprint {cfg.data_fingerprint[:12]}, but {cfg.data} "
                        f"now has {data.fingerprint[:12]} (prepared again or replaced); resuming would not read the "
                        f"same sequences: start a new run, or restore the data")
    if cfg.init_from:
        src = find_run_tokenizer(Path(cfg.init_from))
        if src is not None and file_fingerprint(src) != data.tokenizer_sha256:
            raise DataError(f"--init-from {cfg.init_from} was trained with another tokenizer ({src}) than the one "
                            f"{cfg.data} was prepared with ({data.tokenizer_path})")
    existing = run / RUN_TOKENIZER
    if existing.is_file() and file_fingerprint(existing) != data.tokenizer_sha256:
        raise DataError(f"{existing} differs from the tokenizer {cfg.data} was prepared with")
    source = TextData(data, cfg, spec)
    cfg.data_fingerprint = data.fingerprint
    cfg.task = "text"  # what `hsa eval` reads from train_config.json: no synthetic task was trained
    if is_main and not existing.is_file():
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / f".{RUN_TOKENIZER}.tmp"
        shutil.copyfile(data.tokenizer_path, tmp)
        tmp.replace(existing)
    return source
