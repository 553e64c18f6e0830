"""The training forward with RAMba's state options (spec section 7), as one module.

``SegmentedForward(model)(input_ids, init_states)`` runs the language model over a training
sequence and returns the logits ``(B, T, V)`` and the final mixer states:

* ``state_reset_every = N``: the backbone (mixer) states restart from the zero state every ``N``
  tokens while the chunk memories and the absolute position carry on. Long-range information can
  then only travel through HSA's chunk memory, which is what teaches retrieval to extrapolate. The
  model does it in one call (``HSALanguageModel.forward(..., state_reset_every=N)``: the mixers run
  the segments as rows of one batch), not one call per segment: 8 calls of 512 tokens per 4K
  sequence trained at a sixth of the speed on the H200 (bench/results/h200_realtext/README.md, run 11).
* ``init_states``: the sequence starts from given mixer states (another segment's final state:
  "memory reset" passes the previous batch's states and zeros every K batches).

Being one ``nn.Module`` matters under DDP: the whole segment loop is one ``forward`` call, so DDP
sees exactly one forward per backward.
"""

from __future__ import annotations

import zlib
from typing import Any

from torch import Tensor, nn

from hsa_core.interfaces import MixerState

from ..tasks.base import IGNORE_INDEX


class SegmentedForward(nn.Module):
    """Wraps a :class:`~hsa_core.model.HSALanguageModel` for training.

    Args:
        model: the language model (``forward(ids, cache, return_cache)`` and ``init_cache``).
        state_reset_every: segment length ``N`` in tokens, or ``None`` for one full pass.
    """

    def __init__(self, model: nn.Module, state_reset_every: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.state_reset_every = state_reset_every

    def forward(self, input_ids: Tensor, init_states: list[MixerState | None] | None = None,
                return_states: bool = False, *, cache: Any = None, passthrough: bool = False,
                targets: Tensor | None = None, loss_mask: Tensor | None = None,
                answer_positions: Tensor | None = None, mask_is_answers: bool = False) -> Any:
        """``input_ids`` ``(B, T)`` -> logits ``(B, T, V)`` and (if asked) the final mixer states.

        With ``targets`` ``(B, T)`` and ``loss_mask`` ``(B, T)`` bool, the LM head and the loss are
        fused (:func:`hsa_core.losses.linear_cross_entropy`: no ``(B, T, V)`` logits) and the result
        is ``(loss_sum, answer_logits, states)``: the fp32 summed cross-entropy over the masked
        positions, and the logits ``(B, A, V)`` at ``answer_positions`` ``(B, A)`` only (for the
        exact-match metric; ``None`` without positions). Computing the loss here, inside the wrapped
        module's forward, is what lets DDP and FSDP2 see the head like any other layer.
        ``mask_is_answers=True`` says that ``loss_mask`` is exactly the positions in
        ``answer_positions`` (``TaskBatch.loss_mask("answer")`` of a batch with answers): the loss then
        runs on those ``B x A`` rows only. Otherwise it runs on every row with the masked-out targets
        ignored. Neither selects rows by a boolean mask, whose row count the host would have to wait
        for on every step.

        ``passthrough=True`` is plain inference: ``model(input_ids, cache, return_cache=True)``
        (evaluation through a data-parallel wrapper).
        """
        if passthrough:
            return self.model(input_ids, cache, return_cache=True)
        fused = targets is not None
        run = self.model.forward_hidden if fused else self.model
        n = self.state_reset_every
        if init_states is None:
            out, final = _unpack(run(input_ids, return_cache=return_states, state_reset_every=n))
        else:
            cache = self.model.init_cache(input_ids.shape[0], device=input_ids.device)
            cache.mixer_states = list(init_states)
            out, final = _unpack(run(input_ids, cache, return_cache=True, state_reset_every=n))
        states = final.mixer_states if (return_states and final is not None) else None
        if not fused:
            return out, states
        return (*self._loss(out, targets, loss_mask, answer_positions, mask_is_answers), states)

    def _loss(self, hidden: Tensor, targets: Tensor, loss_mask: Tensor | None, answer_positions: Tensor | None,
              mask_is_answers: bool) -> tuple[Tensor, Tensor | None]:
        from hsa_core.losses import linear_cross_entropy

        weight = self.model.lm_head.weight
        if answer_positions is None:
            answer_rows = None
        else:  # (B, A, d)
            answer_rows = hidden.gather(1, answer_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        if mask_is_answers and answer_rows is not None:
            rows, row_targets = answer_rows.flatten(0, 1), targets.gather(1, answer_positions).flatten()
        else:
            masked = targets if loss_mask is None else targets.masked_fill(~loss_mask, IGNORE_INDEX)
            rows, row_targets = hidden.flatten(0, 1), masked.flatten()
        loss_sum = linear_cross_entropy(rows, weight, row_targets)
        answer_logits = None if answer_rows is None else self.model.lm_head(answer_rows)
        return loss_sum, answer_logits


def _unpack(out: Any) -> tuple[Tensor, Any]:
    """``ModelOutput`` or ``forward_hidden``'s tuple -> ``(tensor, cache)``."""
    return (out.logits, out.cache) if hasattr(out, "logits") else (out[0], out[1])


def detach_states(states: list[MixerState | None] | None) -> list[MixerState | None] | None:
    """Detached copies of mixer states (carried across batches without backpropagating into them)."""
    if states is None:
        return None
    return [None if s is None else {k: v.detach().clone() for k, v in s.items()} for s in states]


def step_seed(seed: int, step: int, part: int = 0) -> int:
    """Seed of the data of ``step`` (stable across machines and processes)."""
    return zlib.crc32(f"train:{seed}:{step}:{part}".encode()) & 0x7FFFFFFF


class EvalAdapter(nn.Module):
    """``(ids, cache, return_cache) -> ModelOutput`` through the (possibly wrapped) training module
    (evaluation during training, through DDP/FSDP2's hooks)."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def forward(self, input_ids: Tensor, cache: Any = None, return_cache: bool = False) -> Any:
        return self.wrapped(input_ids, cache=cache, passthrough=True)
