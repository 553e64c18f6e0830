"""Streaming generation for ``hsa generate``: segment-wise prefill of a prompt of any length, then one
token per call through the model cache, yielding each token as it is chosen; and a decoder that turns
the token stream into text pieces without splitting a multi-byte character.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn


@torch.inference_mode()
def prefill(model: nn.Module, input_ids: Tensor, *, segment_len: int = 4096,
            autocast_dtype: torch.dtype | None = None) -> tuple[Tensor, Any]:
    """Run ``input_ids`` ``(B, T)`` through the model ``segment_len`` tokens at a time, carrying the
    cache (recurrent states, chunk memory, position), so activations never exceed one segment.

    Returns:
        ``(logits of the last position (B, V) fp32, cache)``.
    """
    from .devices import autocast_context

    if input_ids.shape[1] < 1:
        raise ValueError("prefill needs at least one token")
    cache, last = None, None
    with autocast_context(input_ids.device, autocast_dtype):
        for s in range(0, input_ids.shape[1], segment_len):
            out = model(input_ids[:, s:s + segment_len], cache, return_cache=True)
            cache, last = out.cache, out.logits[:, -1].float()
    assert last is not None
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


@torch.inference_mode()
def stream_generate(model: nn.Module, prompt: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                    eos_id: int | None = None, segment_len: int = 4096, device: torch.device | str = "cpu",
                    autocast_dtype: torch.dtype | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt`` (stops after ``eos_id``).

    The prompt is prefilled segment-wise (:func:`prefill`); every new token is one forward call of
    one token on the cache. Deterministic for a given ``seed``.
    """
    from .devices import autocast_context

    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was = model.training
    model.eval()
    try:
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        g = torch.Generator().manual_seed(seed)
        logits, cache = prefill(model, ids, segment_len=segment_len, autocast_dtype=autocast_dtype)
        for i in range(max_new_tokens):
            token = pick_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=g)
            tid = int(token[0])
            yield tid
            if (eos_id is not None and tid == eos_id) or i + 1 == max_new_tokens:
                break
            with autocast_context(ids.device, autocast_dtype):
                out = model(token[:, None], cache, return_cache=True)
            cache, logits = out.cache, out.logits[:, -1].float()
    finally:
        model.train(was)


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
