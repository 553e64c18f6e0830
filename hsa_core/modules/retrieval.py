"""Retrieval (spec sections 4-5): retrieval queries, causal top-k over landmarks, fusion weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import NamedTuple

from torch import Tensor, nn

from ..ops import WEIGHTINGS, hsa_select, hsa_select_windows
from .chunk_memory import MemoryState
from .common import RMSNorm
from .offload import gather_selected


class Selection(NamedTuple):
    """Chosen chunks per token and KV head (or one retrieval head shared by all KV heads).

    Attributes:
        indices: ``(B, T, H_r, topk)`` int32 chunk ids, most recent first, -1 = empty slot.
        weights: ``(B, T, H_r, topk)`` fp32 fusion weights, 0 on empty slots.
    """

    indices: Tensor
    weights: Tensor


class Retrieval(nn.Module):
    """``q_r = W_r RMSNorm(x)`` split into ``H_r`` heads, then :func:`hsa_core.ops.hsa_select`.

    Args:
        d_model: width of the input stream.
        retrieval_dim: d_r (must equal the memory's ``landmark_dim``).
        retrieval_heads: H_r (must equal the memory's ``retrieval_heads``).
        topk: chunks kept per token.
        chunk_size: S of the memory read.
        weighting: ``"stick_breaking"`` or ``"softmax"``.
        gumbel: Gumbel noise on the selection scores while training.
        window: hide chunks that a sliding window of this many tokens already covers.
        landmark_norm: per-head RMSNorm (own weights) on the retrieval query and on the landmarks
            before scoring (the authors' ``enable_lmk_norm``; the memory keeps raw landmarks).
        norm_eps: epsilon of this module's RMSNorms.
    """

    def __init__(self, d_model: int, *, retrieval_dim: int, retrieval_heads: int = 1, topk: int = 8,
                 chunk_size: int = 64, weighting: str = "stick_breaking", gumbel: bool = False,
                 window: int | None = None, landmark_norm: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if retrieval_dim % retrieval_heads:
            raise ValueError(f"retrieval_heads={retrieval_heads} must divide retrieval_dim={retrieval_dim}")
        self.retrieval_heads, self.topk, self.chunk_size = retrieval_heads, topk, chunk_size
        self.weighting, self.gumbel, self.window = weighting, gumbel, window
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.query = nn.Linear(d_model, retrieval_dim, bias=False)
        head = retrieval_dim // retrieval_heads
        self.q_norm = RMSNorm(head, eps=norm_eps) if landmark_norm else None
        self.landmark_norm = RMSNorm(head, eps=norm_eps) if landmark_norm else None

    def forward(self, x: Tensor, memory: MemoryState, q_offset: int = 0) -> Selection:
        """x ``(B, T, d)`` at absolute positions ``q_offset..q_offset+T-1`` -> :class:`Selection`."""
        B, T, _ = x.shape
        q_r = self.query(self.norm(x)).view(B, T, self.retrieval_heads, -1)
        store = memory.store
        if store is not None and store.host_landmarks and store.landmarks is not None:
            return self._select_windows(q_r, memory, q_offset)
        landmarks = memory.landmarks.to(q_r.dtype)
        if self.q_norm is not None and self.landmark_norm is not None:
            q_r, landmarks = self.q_norm(q_r), self.landmark_norm(landmarks)
        indices, weights = hsa_select(
            q_r, landmarks, topk=self.topk, chunk_size=self.chunk_size,
            q_offset=q_offset, weighting=self.weighting, window=self.window,
            gumbel=self.gumbel and self.training,
        )
        return Selection(indices, weights)

    def _select_windows(self, q_r: Tensor, memory: MemoryState, q_offset: int) -> Selection:
        """The selection of a memory whose landmarks live in host memory: a window of them on the device
        at a time (:func:`hsa_core.ops.hsa_select_windows`); the same indices and weights."""
        assert memory.store is not None
        norm = self.landmark_norm  # set together with q_norm (landmark_norm=True)
        if self.q_norm is not None:
            q_r = self.q_norm(q_r)

        def windows() -> Iterator[tuple[int, Tensor]]:
            for c0, lm in memory.store.landmark_windows(memory.num_chunks):
                lm = lm.to(q_r.dtype)
                yield c0, lm if norm is None else norm(lm)
                del lm  # a dtype conversion or the norm made a new tensor: not kept past its window

        indices, weights = hsa_select_windows(q_r, windows(), topk=self.topk, chunk_size=self.chunk_size,
                                              q_offset=q_offset, weighting=self.weighting, window=self.window)
        return Selection(indices, weights)


@contextmanager
def captured_selections(model: nn.Module) -> Iterator[dict[str, list[Selection]]]:
    """Record what every :class:`Retrieval` module of ``model`` selects while the block runs.

    Yields ``{module name: [Selection, ...]}``, one entry per retrieval module (an empty dict: the model
    has none), each list in call order: a segment-wise prefill gives one ``Selection`` per segment,
    ``(B, t, H_r, topk)`` each. They are kept on the CPU (indices int32, weights fp32), so recording a
    long prefill does not grow device memory. The hooks are removed on exit.
    """
    captured: dict[str, list[Selection]] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: object, selection: Selection) -> None:
            captured[name].append(Selection(selection.indices.int().cpu(), selection.weights.float().cpu()))
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Retrieval):
            captured[name] = []
            handles.append(module.register_forward_hook(keep(name)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def read_selected(memory: MemoryState, selection: Selection) -> tuple[MemoryState, Selection]:
    """What an HSA layer reads for ``selection``: ``memory`` itself when it is on the device; for an
    offloaded memory, a state whose k/v ``(B, N*S, H, D)`` hold only the selected chunks (copied from
    the host once, deduplicated per batch row) with the selection renumbered into them
    (:func:`hsa_core.modules.offload.gather_selected`). Landmarks, pending and counts are unchanged,
    so a layer that reads k/v through the selection's indices gets exactly the on-device result.
    """
    if memory.store is None:
        return memory, selection
    k, v, indices = gather_selected(memory.store, memory.k, memory.v, memory.num_chunks, selection.indices)
    return replace(memory, k=k, v=v, store=None), Selection(indices, selection.weights)
