"""The training forward with RAMba's state options (spec section 7), as one module.

``SegmentedForward(model)(input_ids, init_states)`` runs the language model over a training
sequence and returns the logits ``(B, T, V)`` and the final mixer states:

* ``state_reset_every = N``: the sequence is processed in segments of ``N`` tokens through the
  model cache; at each boundary the backbone (mixer) states are replaced by the zero state while the
  chunk memories and the absolute position carry on. Long-range information can then only travel
  through HSA's chunk memory, which is what teaches retrieval to extrapolate.
* ``init_states``: the sequence starts from given mixer states (another segment's final state:
  "memory reset" passes the previous batch's states and zeros every K batches).

Being one ``nn.Module`` matters under DDP: the whole segment loop is one ``forward`` call, so DDP
sees exactly one forward per backward.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..interfaces import MixerState


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
                return_states: bool = False, *, cache: Any = None, passthrough: bool = False) -> Any:
        """``input_ids`` ``(B, T)`` -> logits ``(B, T, V)`` and (if asked) the final mixer states.

        ``passthrough=True`` is plain inference: ``model(input_ids, cache, return_cache=True)``
        (evaluation through a data-parallel wrapper).
        """
        if passthrough:
            return self.model(input_ids, cache, return_cache=True)
        n = self.state_reset_every
        B, T = input_ids.shape
        if (n is None or n >= T) and init_states is None:
            out = self.model(input_ids, return_cache=return_states)
            return out.logits, (out.cache.mixer_states if return_states else None)
        cache = self.model.init_cache(B, device=input_ids.device)
        zero_states = cache.mixer_states
        if init_states is not None:
            cache.mixer_states = list(init_states)
        step = n if n is not None else T
        logits: list[Tensor] = []
        for s in range(0, T, step):
            out = self.model(input_ids[:, s: s + step], cache, return_cache=True)
            logits.append(out.logits)
            cache = out.cache
            if s + step < T:
                # Backbone forgets, memory and position persist.
                cache.mixer_states = list(zero_states)
        return (logits[0] if len(logits) == 1 else _cat(logits)), (cache.mixer_states if return_states else None)


def _cat(parts: list[Tensor]) -> Tensor:
    import torch

    return torch.cat(parts, dim=1)


def detach_states(states: list[MixerState | None] | None) -> list[MixerState | None] | None:
    """Detached copies of mixer states (carried across batches without backpropagating into them)."""
    if states is None:
        return None
    return [None if s is None else {k: v.detach().clone() for k, v in s.items()} for s in states]
