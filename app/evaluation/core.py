"""Exact-match evaluation over a depth x length grid with bounded memory.

A sequence far longer than training is prefilled segment by segment through the model cache
(recurrent states + incremental chunk memory + position), so activations never exceed one segment;
only the chunk memory grows with the length (keys/values of the complete chunks, which HSA needs).
Only the rows at answer positions go through the LM head: a segment's full ``(B, L, V)`` logits would
be the largest tensor of the prefill (the model's ``forward_hidden`` and ``lm_head``, where it has them).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hsa_core.devices import autocast_context
from hsa_core.generation import RunStats

from ..tasks import Task, TaskBatch

__all__ = ["CellResult", "EvalResult", "PrefillProgress", "autocast_context", "cell_seed", "evaluate",
           "predict_answers", "wilson_interval"]


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``z`` = 1.96: 95%); ``(0, 1)`` for ``n = 0``.

    Why Wilson and not p +- z * stderr: the cells of a passkey table sit near 100%, where the normal
    interval runs past 1 and shrinks to nothing at 40 of 40."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class CellResult:
    """One (length, depth) cell: ``accuracy`` = fraction of samples whose every answer token is the
    argmax (exact match); ``token_accuracy`` = fraction of answer tokens right; ``missed``: the indices
    (0 .. samples - 1, in the cell's seeded order) of the samples not answered exactly, so that runs of
    different models, which see the same samples, can be compared sample by sample; ``missed_answers``:
    the argmax tokens the model gave at the answer positions of each of those samples (same order), to
    tell which answer tokens were wrong and what was read instead."""

    length: int
    depth: float | None
    samples: int
    accuracy: float
    token_accuracy: float
    seconds: float
    missed: list[int] = field(default_factory=list)
    missed_answers: list[list[int]] = field(default_factory=list)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """The 95% (Wilson) interval of the exact-match accuracy over this cell's samples: with 40
        samples a cell, 90% spans 77-96%, so one cell's figure alone says little about a bar near it."""
        return wilson_interval(round(self.accuracy * self.samples), self.samples, z)


@dataclass
class EvalResult:
    task: str
    task_options: dict[str, Any]
    lengths: list[int]
    depths: list[float | None]
    cells: list[CellResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def cell(self, length: int, depth: float | None) -> CellResult:
        return next(c for c in self.cells if c.length == length and c.depth == depth)

    def by_length(self) -> dict[int, float]:
        """Mean exact-match accuracy per length over depths (sample-weighted)."""
        out = {}
        for n in self.lengths:
            cs = [c for c in self.cells if c.length == n]
            out[n] = sum(c.accuracy * c.samples for c in cs) / max(1, sum(c.samples for c in cs))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for cell, out in zip(self.cells, d["cells"]):
            out["accuracy_ci95"] = [round(v, 4) for v in cell.interval()]
        d["accuracy_by_length"] = {str(k): v for k, v in self.by_length().items()}
        return d




@torch.inference_mode()
def predict_answers(model: nn.Module, batch: TaskBatch, *, segment_len: int = 4096,
                    autocast_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    offload: bool | None = None, stats: Any = None,
                    on_segment: Callable[[int, int], None] | None = None) -> Tensor:
    """Teacher-forced argmax at the answer positions, prefilling ``segment_len`` tokens at a time.

    Args:
        model: ``forward(ids, cache, return_cache=True) -> (logits, cache)``; a model that also has
            ``forward_hidden`` (same call, returning hidden states) and an ``lm_head`` module (as
            :class:`~hsa_core.model.HSALanguageModel`) runs the head on the answer rows only.
        batch: ``input_ids`` ``(B, T)``; may stay on the CPU (each segment is moved to ``device``, so
            a 64M-token prompt does not sit on the GPU).
        device: where the model runs (default: the batch's device).
        offload: chunk memories' K/V in host memory (``model.init_cache(offload=...)``; ``None``: as
            the layout says).
        stats: a :class:`hsa_core.generation.RunStats` to add this prefill's tokens, time and memory to.
        on_segment: called after each segment is queued with ``(tokens of each row done, T)`` (no GPU
            synchronisation of its own: a progress display for prefills of millions of tokens).

    Returns:
        ``(B, A)`` predicted ids at ``batch.answer_positions``, on ``device``.
    """
    device = torch.device(device) if device is not None else batch.input_ids.device
    ids, pos = batch.input_ids, batch.answer_positions.to(device)
    B, T = ids.shape
    preds = torch.full_like(pos, -1)
    cache = None if offload is None else model.init_cache(B, offload=offload, reserve_tokens=T)
    first_needed = int(pos.min())
    head = getattr(model, "lm_head", None) if hasattr(model, "forward_hidden") else None
    t0 = time.perf_counter()
    with autocast_context(device, autocast_dtype):
        for s in range(0, T, segment_len):
            e = min(T, s + segment_len)
            if head is not None:
                out, cache = model.forward_hidden(ids[:, s:e].to(device), cache, return_cache=True)  # (B, L, d)
            else:
                result = model(ids[:, s:e].to(device), cache, return_cache=True)
                out, cache = result.logits, result.cache  # (B, L, V)
            if on_segment is not None:
                on_segment(e, T)
            inside = (pos >= s) & (pos < e)
            if e > first_needed and inside.any():
                idx = (pos - s).clamp(0, e - s - 1)
                rows = out.gather(1, idx.unsqueeze(-1).expand(-1, -1, out.shape[-1]))  # (B, A, d or V)
                if head is not None:
                    rows = head(rows)
                preds = torch.where(inside, rows.argmax(-1), preds)
            del out  # not alive through the next segment's forward
    if stats is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.prefill_tokens += B * T
        stats.prefill_seconds += time.perf_counter() - t0
        stats.finish(device, cache)
    return preds


@dataclass(frozen=True)
class PrefillProgress:
    """Where a cell's prefill stands (``evaluate``'s ``on_prefill``).

    Attributes:
        length, depth: the cell.
        first, batch, samples: samples ``first .. first + batch - 1`` of the cell's ``samples`` are in this
            forward.
        tokens, total: tokens of each of those rows prefilled so far, of ``total``.
        gpu_peak_bytes: the GPU memory peak of the length so far (``None`` off CUDA): a run stopped in
            a long prefill (a 64M cell takes minutes) still shows how much it had needed.
    """

    length: int
    depth: float | None
    first: int
    batch: int
    samples: int
    tokens: int
    total: int
    gpu_peak_bytes: int | None = None


def _reporter(on_prefill: Callable[[PrefillProgress], None], length: int, depth: float | None, first: int,
              batch: int, samples: int, device: torch.device) -> Callable[[int, int], None]:
    """``predict_answers``' ``on_segment`` for one forward of a cell: ``on_prefill`` with the cell's context."""
    def report(tokens: int, total: int) -> None:
        # the allocator's counter, read on the host: no synchronisation (the peak of the work queued so far)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        on_prefill(PrefillProgress(length, depth, first, batch, samples, tokens, total, peak))
    return report


def cell_seed(seed: int, length: int, depth_index: int) -> int:
    """The generator seed of one (length, depth) cell: the samples of a cell are the same for every model
    and every tool that scores it (stable across runs and machines: no Python hash randomisation)."""
    return zlib.crc32(f"{seed}:{length}:{depth_index}".encode()) & 0x7FFFFFFF


def evaluate(model: nn.Module, task: Task, lengths: Sequence[int], depths: Sequence[float | None], *,
             samples: int = 32, seed: int = 1234, segment_len: int = 4096, max_batch_tokens: int = 1 << 17,
             device: torch.device | str | None = None, autocast_dtype: torch.dtype | None = None,
             rank: int = 0, world_size: int = 1, reduce: Callable[[Tensor], Tensor] | None = None,
             on_cell: Callable[[CellResult], None] | None = None,
             on_result: Callable[[EvalResult], None] | None = None,
             time_limit: float | None = None, offload: bool | None = None,
             on_prefill: Callable[[PrefillProgress], None] | None = None) -> EvalResult:
    """Exact-match accuracy of ``model`` on ``task`` for every (length, depth).

    The samples of a cell are the same for every model (seeded by ``seed``, length and depth index),
    so runs are comparable. With ``world_size > 1`` each rank scores samples ``rank::world_size`` and
    ``reduce`` (an all-reduce sum) combines the counts.

    Args:
        samples: per cell.
        max_batch_tokens: sequences per forward = ``max(1, max_batch_tokens // length)``.
        time_limit: seconds; a length is not started when it would end past the limit, its time
            predicted from the previous length's (proportional to the length). At least one length is
            evaluated; ``result.lengths`` lists the ones done and ``result.meta["skipped_lengths"]`` the
            others. Pass lengths in increasing order so that the cheap ones are done first.
        offload: chunk memories' K/V in host memory (``None``: as the layout says). The footprint and
            speed of every length (GPU peak, host memory, prefill tokens/s) go to
            ``result.meta["footprint"]``.
        on_cell: called with every finished cell.
        on_result: called after every cell with the result so far (its cells, and in
            ``meta["footprint"]`` each started length's footprint so far), e.g. to save it.
        on_prefill: called after every prefill segment with a :class:`PrefillProgress` (which cell,
            which samples, how far), for a progress display.
    """

    t_start = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    result = EvalResult(task.name, dict(task.options), list(lengths), list(depths))
    try:
        last: tuple[int, float] | None = None  # (length, seconds) of the previous length
        for li, length in enumerate(lengths):
            elapsed = time.perf_counter() - t_start
            predicted = 0.0 if last is None else last[1] * length / last[0]
            if li and time_limit is not None and elapsed + predicted > time_limit:
                result.lengths = list(lengths[:li])
                result.meta["skipped_lengths"] = list(lengths[li:])
                break
            per_batch = max(1, min(samples, max_batch_tokens // length))
            t_length = time.perf_counter()
            # offload=None: the model's layout decides (adapters without the method: not offloaded)
            flags = model.offloaded_memories(offload) if hasattr(model, "offloaded_memories") else {"": bool(offload)}
            stats = RunStats(offload=any(flags.values()))
            RunStats.start(device)
            for di, depth in enumerate(depths):
                t0 = time.perf_counter()
                g = torch.Generator().manual_seed(cell_seed(seed, length, di))
                counts = torch.zeros(3, dtype=torch.float64)  # exact, tokens right, tokens
                missed = torch.zeros(samples, dtype=torch.float64)  # 1 where a sample was not exact
                # (samples, answer tokens): the argmax tokens of the missed samples (ids < 2**53: exact)
                answers = torch.zeros(samples, task.num_answers, dtype=torch.float64)
                done = 0
                while done < samples:
                    n = min(per_batch, samples - done)
                    batch = task.sample(n, length, g, depth=depth)
                    mine = torch.arange(done, done + n) % world_size == rank
                    done += n
                    if not mine.any():
                        continue
                    b = batch.select(mine)  # ids stay on the CPU; segments go to the device
                    report = None if on_prefill is None else _reporter(on_prefill, length, depth, done - n, n,
                                                                         samples, device)
                    preds = predict_answers(model, b, segment_len=segment_len, autocast_dtype=autocast_dtype,
                                            device=device, offload=offload, stats=stats, on_segment=report)
                    preds = preds.cpu()
                    right = preds == b.answers().cpu()
                    exact = right.all(1)
                    counts += torch.tensor([exact.sum().item(), right.sum().item(), right.numel()],
                                           dtype=torch.float64)
                    wrong = torch.arange(done - n, done)[mine][~exact]
                    missed[wrong] = 1.0
                    answers[wrong] = preds[~exact].double()
                if reduce is not None:  # one all-reduce for the counts, misses and missed answers of every rank
                    flat = reduce(torch.cat([counts, missed, answers.flatten()]))
                    counts, missed = flat[:3], flat[3:3 + samples]
                    answers = flat[3 + samples:].view(samples, -1)
                rows = missed.nonzero().flatten()
                cell = CellResult(length, depth, samples, float(counts[0] / samples),
                                  float(counts[1] / max(1.0, float(counts[2]))), time.perf_counter() - t0,
                                  missed=rows.tolist(), missed_answers=answers[rows].long().tolist())
                result.cells.append(cell)
                # the length's footprint so far: a partial result written by on_result has it
                result.meta.setdefault("footprint", {})[str(length)] = stats.to_dict()
                if on_result is not None:  # first: a cell is saved even when on_cell raises (a stop)
                    on_result(result)
                if on_cell is not None:
                    on_cell(cell)
            last = (length, time.perf_counter() - t_length)
    finally:
        model.train(was_training)
    return result
