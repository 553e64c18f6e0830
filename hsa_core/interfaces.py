"""The contracts every backbone (mixer) and retrieval layer implements.

A *mixer* is a sequence-mixing ``nn.Module`` over hidden states of shape ``(B, T, d_model)`` (the
habit of ``mamba_ssm``: the mixer knows nothing about norms or residuals; :class:`hsa_core.modules.Block`
wraps it). What makes hybrids composable is one state contract shared by all of them:

* ``mixer(x)`` runs a full pass and returns ``(y, None)``;
* ``mixer(x, state)`` continues from ``state`` and returns ``(y, new_state)``;
* ``mixer(x, return_state=True)`` starts from the zero state and returns the final state.

The state is a flat ``dict[str, Tensor]`` whose tensors all have the batch as their first dimension,
so a model cache can be moved, sliced, saved or compared without knowing the mixer. Processing a
sequence in segments (any split, including one token at a time) and carrying the state must give the
same outputs as one full pass: :mod:`hsa_core.testing.contract` checks exactly that for any mixer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

MixerState = dict[str, Tensor]


class Mixer(nn.Module, ABC):
    """Base class of sequence mixers (backbones).

    Subclasses set ``d_model`` and implement :meth:`forward` and :meth:`init_state`.

    Class attributes:
        causal: ``True`` for mixers whose output at ``t`` depends only on inputs ``<= t`` (all
            built-ins). Non-causal mixers cannot be decoded step by step.
    """

    causal: bool = True
    d_model: int

    @abstractmethod
    def forward(
        self, x: Tensor, state: MixerState | None = None, *, return_state: bool = False
    ) -> tuple[Tensor, MixerState | None]:
        """Mix a sequence.

        Args:
            x: ``(B, T, d_model)`` hidden states; ``T >= 1``.
            state: recurrent state from :meth:`init_state` or an earlier call; ``None`` = start fresh.
            return_state: return the final state even when ``state`` is ``None``.

        Returns:
            ``(y, new_state)``: ``y`` is ``(B, T, d_model)`` in ``x``'s dtype; ``new_state`` is
            ``None`` when neither ``state`` nor ``return_state`` was given.
        """

    @abstractmethod
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """The zero state for ``batch_size`` sequences (what a full pass starts from)."""

    def step(self, x: Tensor, state: MixerState) -> tuple[Tensor, MixerState]:
        """Decode one token: ``x`` is ``(B, d_model)``; returns ``((B, d_model), new_state)``.

        The default runs :meth:`forward` on a length-1 sequence; mixers with a cheaper single-token
        update override it.
        """
        y, new_state = self.forward(x.unsqueeze(1), state)
        assert new_state is not None
        return y.squeeze(1), new_state

    def state_size(self, batch_size: int = 1, seq_len: int = 0) -> int:
        """Number of state elements after ``seq_len`` tokens (for memory estimates).

        The default asks :meth:`init_state` on the meta device; mixers whose state grows with the
        sequence (attention KV caches) override it.
        """
        state = self.init_state(batch_size, device="meta")
        return sum(t.numel() for t in state.values())


def slice_state(state: MixerState, index: slice | Tensor) -> MixerState:
    """Select batch rows of a state (every tensor has the batch first)."""
    return {k: v[index] for k, v in state.items()}
