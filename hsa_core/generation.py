"""Streaming generation for ``hsa generate``: segment-wise prefill of a prompt of any length, then one
token per call through the model cache, yielding each token as it is chosen; and a decoder that turns
the token stream into text pieces without splitting a multi-byte character.

Memory is bounded at any context length: prefill keeps one segment of activations and only the last
position's logits; with ``offload=True`` the chunk memories' K/V live in host memory, so what grows on
the GPU is only the landmarks (one vector per chunk). :class:`RunStats` records the GPU peak, the host
memory of the offloaded K/V and the prefill and decode throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .devices import autocast_context
from .modules.offload import GatherStats


@dataclass
class RunStats:
    """Footprint and speed of a prefill (+ decode), as ``hsa eval`` and ``hsa generate`` report them.

    Attributes:
        offload: whether the chunk memories' K/V were in host memory.
        prefill_tokens, prefill_seconds: tokens prefilled (all rows) and the time it took.
        decode_tokens, decode_seconds: tokens decoded one call each (all rows) and their time.
        gpu_peak_bytes: ``torch.cuda.max_memory_allocated`` since :meth:`start` (``None`` off CUDA).
        host_bytes: host memory of the offloaded K/V at the end (0 when not offloaded).
        memory_device_bytes: device bytes of the cache at the end (states, landmarks, resident chunks).
        gathers: the offloaded memories' host -> device gathers over the calls recorded
            (:class:`~hsa_core.modules.offload.GatherStats`: calls, device_reads, chunks, bytes,
            sync_seconds, copy_seconds; all zero when nothing is offloaded; a dict in :meth:`to_dict`).
    """

    offload: bool = False
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    # memory: the largest seen over the calls recorded (several prefills add up their tokens and time)
    gpu_peak_bytes: int | None = None
    host_bytes: int = 0
    memory_device_bytes: int = 0
    gathers: GatherStats = field(default_factory=GatherStats)

    @staticmethod
    def start(device: torch.device | str) -> None:
        """Reset the GPU peak counter (call before the work measured)."""
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def finish(self, device: torch.device | str, cache: Any) -> None:
        """Record the GPU peak and the cache's memory after the work."""
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.gpu_peak_bytes = max(self.gpu_peak_bytes or 0, torch.cuda.max_memory_allocated(device))
        if hasattr(cache, "host_nbytes"):  # a ModelCache (evaluation adapters may carry anything)
            self.host_bytes = max(self.host_bytes, cache.host_nbytes())
            self.memory_device_bytes = max(self.memory_device_bytes, cache.nbytes())
            self.gathers.add(cache.take_gather_stats())  # taken: a later finish on the same cache adds only what is new

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2)}

    def summary(self) -> str:
        """One line: prefill and decode speed, GPU peak, where the chunk K/V are (:func:`footprint_line`)."""
        return footprint_line(self.to_dict())


def footprint_line(stats: dict[str, Any]) -> str:
    """One line from :meth:`RunStats.to_dict` (also as stored in ``eval_*.json``): ``prefill N tokens at
    X tokens/s; decode Y tokens/s (Z ms/token); GPU peak ...; chunk K/V in host memory ...``."""
    from .units import format_bytes

    parts = [f"prefill {stats['prefill_tokens']:,} tokens at {stats['prefill_tokens_per_s']:,.0f} tokens/s"]
    if stats.get("decode_tokens"):
        rate = stats["decode_tokens_per_s"]
        parts.append(f"decode {rate:,.1f} tokens/s ({1000 / max(rate, 1e-9):.2f} ms/token)")
    if stats.get("gpu_peak_bytes") is not None:
        parts.append(f"GPU peak {format_bytes(stats['gpu_peak_bytes'])}")
    parts.append(f"chunk K/V in host memory {format_bytes(stats['host_bytes'])}" if stats.get("offload")
                 else "chunk memory on the device")
    g = stats.get("gathers") or {}
    if g.get("calls"):
        parts.append(f"gathered {format_bytes(g['bytes'])} from the host in {g['calls']:,} copies "
                     f"({g['copy_seconds']:.1f} s copying, {g['sync_seconds']:.1f} s waiting for the selection)")
    return "; ".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def prefill(model: nn.Module, input_ids: Tensor, *, segment_len: int = 4096,
            autocast_dtype: torch.dtype | None = None, offload: bool | None = None,
            stats: RunStats | None = None,
            on_segment: Callable[[int, int], None] | None = None) -> tuple[Tensor, Any]:
    """Run ``input_ids`` ``(B, T)`` through the model ``segment_len`` tokens at a time, carrying the
    cache (recurrent states, chunk memory, position), so activations never exceed one segment.

    ``input_ids`` may stay on the CPU (each segment is moved to the model's device): at 64M tokens the
    ids alone are 512 MiB per row. Only the last position goes through the LM head.

    Args:
        offload: keep the chunk memories' K/V in host memory (``None``: as the layout says).
        stats: filled with the prefill's tokens, time, GPU peak and cache memory.
        on_segment: called after each segment is queued with ``(tokens done, T)`` (a progress display;
            it adds no GPU synchronisation).

    Returns:
        ``(logits of the last position (B, V) fp32, cache)``.
    """
    if input_ids.shape[1] < 1:
        raise ValueError("prefill needs at least one token")
    device = next(model.parameters()).device
    B, T = input_ids.shape
    cache = model.init_cache(B, offload=offload, reserve_tokens=T) if offload is not None else None
    if stats is not None:
        stats.offload = bool(any(model.offloaded_memories(offload).values()))
        RunStats.start(device)
    t0 = time.perf_counter()
    h = None
    with autocast_context(device, autocast_dtype):
        for s in range(0, T, segment_len):
            h, cache = model.forward_hidden(input_ids[:, s:s + segment_len].to(device), cache, return_cache=True)
            if on_segment is not None:
                on_segment(min(T, s + segment_len), T)
        assert h is not None
        last = model.lm_head(h[:, -1]).float()
    if stats is not None:
        _sync(device)
        stats.prefill_tokens += B * T
        stats.prefill_seconds += time.perf_counter() - t0
        stats.finish(device, cache)
    return last, cache


def pick_token(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Next token ``(B,)`` from ``(B, V)`` logits: greedy at ``temperature == 0``, else sampled from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest and to the smallest set whose
    probability reaches ``top_p`` (nucleus)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the first token is always kept
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    # sample on the CPU generator (reproducible across devices)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def decode(model: nn.Module, logits: Tensor, cache: Any, *, max_new_tokens: int, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
           eos_id: int | None = None, autocast_dtype: torch.dtype | None = None,
           stats: RunStats | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the next token of every row, ``(B,)``, with the logits ``(B, V)`` it was chosen from, up
    to ``max_new_tokens`` times, starting from the logits of the last position and the cache after
    it: one forward call of one token per step.

    A row that produced ``eos_id`` repeats it; decoding ends when every row has. ``stats`` gets the
    decode time of the calls (synchronised, so it is the latency of a token) and the cache's memory.
    """
    device = logits.device
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        token = pick_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            finished |= token == eos_id
        yield token, logits
        if i + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
            break
        t0 = time.perf_counter()
        with autocast_context(device, autocast_dtype):
            out = model(token[:, None], cache, return_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
        if stats is not None:
            _sync(device)
            stats.decode_tokens += token.shape[0]
            stats.decode_seconds += time.perf_counter() - t0
    if stats is not None:
        stats.finish(device, cache)


@torch.inference_mode()
def stream_generate(model: nn.Module, prompt: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                    eos_id: int | None = None, segment_len: int = 4096, device: torch.device | str | None = None,
                    autocast_dtype: torch.dtype | None = None, offload: bool | None = None,
                    stats: RunStats | None = None,
                    on_segment: Callable[[int, int], None] | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt`` (stops after ``eos_id``).

    The prompt is prefilled segment-wise (:func:`prefill`) on the model's device (``device`` is
    accepted for compatibility); every new token is one forward call of one token on the cache
    (:func:`decode`). Deterministic for a given ``seed``. ``offload`` and ``on_segment`` as in
    :func:`prefill`; ``stats`` gets the prefill and decode figures.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was = model.training
    model.eval()
    try:
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        logits, cache = prefill(model, ids, segment_len=segment_len, autocast_dtype=autocast_dtype,
                                offload=offload, stats=stats, on_segment=on_segment)
        for token, _ in decode(model, logits, cache, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(seed),
                               eos_id=eos_id, autocast_dtype=autocast_dtype, stats=stats):
            yield int(token[0])
    finally:
        model.train(was)


@torch.inference_mode()
def generate_batch(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                   eos_id: int | None = None, segment_len: int = 4096, autocast_dtype: torch.dtype | None = None,
                   offload: bool | None = None, stats: RunStats | None = None,
                   return_logits: bool = False) -> list[list[int]] | tuple[list[list[int]], list[Tensor]]:
    """Continue prompts of different lengths, prefilled together as one right-padded batch.

    The model is causal, so the padding after a row's last token never reaches that row's logits. The
    batch is cut at ``segment_len`` and at every prompt's end: when prompts end, their rows leave the
    batch with their cache (:meth:`~hsa_core.model.ModelCache.select`), so no row is computed past its
    end and each row's cache is exactly the one its prompt alone would give. Rows of equal length are
    then decoded as one batch (a cache holds one position, so rows of different lengths decode in
    separate batches). Greedy output equals :meth:`~hsa_core.model.HSALanguageModel.generate` on
    each prompt alone, token for token; sampling draws from one generator per group of equal length.

    Args:
        prompts: token id lists, each of at least one token.
        offload: keep the chunk memories' K/V in host memory (``None``: as the layout says); rows that
            leave the batch take a copy of their rows of the store.
        return_logits: also return each row's logits ``(N_b, V)`` fp32 for the tokens it generated.

    Returns:
        The generated ids of every prompt (after ``eos_id`` nothing more), in the order given; and the
        logits when ``return_logits``.
    """
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) < 1:
        raise ValueError("generate_batch needs at least one prompt, each of at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    B, L = len(prompts), max(lengths)
    ids = torch.zeros(B, L, dtype=torch.long)  # right padding (never read by a real position)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    was = model.training
    model.eval()
    try:
        cache = model.init_cache(B, offload=offload, reserve_tokens=L + max_new_tokens) if offload is not None else None
        if stats is not None:
            stats.offload = bool(any(model.offloaded_memories(offload).values()))
            RunStats.start(device)
        t0 = time.perf_counter()
        rows = list(range(B))  # prompts still in the batch, in batch order
        groups: list[tuple[list[int], Tensor, Any]] = []  # (prompt indices, last logits, cache)
        start = 0
        for end in sorted({*range(segment_len, L, segment_len), *lengths}):
            with autocast_context(device, autocast_dtype):
                h, cache = model.forward_hidden(ids[rows, start:end].to(device), cache, return_cache=True)
                done = [i for i, r in enumerate(rows) if lengths[r] == end]
                if done:
                    idx = torch.tensor(done, device=device)
                    logits = model.lm_head(h[idx, -1]).float()
            if done:
                keep = [i for i in range(len(rows)) if lengths[rows[i]] != end]
                group_cache = cache if not keep else cache.select(idx)
                groups.append(([rows[i] for i in done], logits, group_cache))
                if keep:
                    cache = cache.select(torch.tensor(keep, device=device))
                rows = [rows[i] for i in keep]
            start = end
        if stats is not None:
            _sync(device)
            stats.prefill_tokens += sum(lengths)
            stats.prefill_seconds += time.perf_counter() - t0
        out: list[list[int]] = [[] for _ in prompts]
        out_logits: list[list[Tensor]] = [[] for _ in prompts]
        for members, logits, group_cache in groups:
            g = torch.Generator().manual_seed(seed)
            for token, chosen_from in decode(model, logits, group_cache, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_k=top_k, top_p=top_p, generator=g,
                                             eos_id=eos_id, autocast_dtype=autocast_dtype, stats=stats):
                for j, r in enumerate(members):
                    if not out[r] or eos_id is None or out[r][-1] != eos_id:
                        out[r].append(int(token[j]))
                        out_logits[r].append(chosen_from[j])
    finally:
        model.train(was)
    if return_logits:
        return out, [torch.stack(x) if x else torch.zeros(0) for x in out_logits]
    return out


class TextStream:
    """Incremental detokenization: :meth:`push` a token id, get the text that is now final.

    Decodes everything generated so far and emits the new suffix, holding back a trailing U+FFFD
    (an incomplete UTF-8 sequence that the next byte tokens may complete).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tok.decode(self.ids)
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1
        piece = text[self.emitted:end]
        self.emitted = end
        return piece

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece
