"""Chunk memory (spec section 3): chunk keys/values and one landmark per chunk.

Built once from the residual stream at the memory's source layer and shared by every HSA layer that
reads it. It is incremental: :meth:`ChunkMemory.forward` takes the previous :class:`MemoryState` and
appends the chunks that the new tokens complete, so a full pass, a segment-wise prefill and
token-by-token decoding all build the same memory (a chunk is encoded once, when its last token
arrives).

A state may keep its K/V in host memory (:mod:`hsa_core.modules.offload`): ``offload=True`` on
:meth:`ChunkMemory.empty_state` gives it a :class:`~hsa_core.modules.offload.ChunkStore`, which every
state that continues it shares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .common import RMSNorm
from .encoder import ChunkEncoder
from .offload import ChunkStore, GatherStats

LANDMARKS = ("cls", "mean")


@dataclass(frozen=True)
class MemoryState:
    """What a chunk memory holds after ``num_tokens`` tokens.

    Attributes:
        k, v: ``(B, C*S, H, D)`` keys and values of the ``C`` complete chunks; with a ``store``, only
            those of the last ``R`` chunks (``(B, R*S, H, D)``, the chunks completed by the latest call
            that completed any), kept on the device so the tokens of that call read them in place.
        landmarks: ``(B, C, H_r, d_rh)`` one summary per complete chunk (always on the device).
        pending: ``(B, P, d)`` source hidden states of the incomplete last chunk, ``P < S``.
        num_tokens: ``C*S + P``.
        store: the host store holding the K/V of all ``C`` chunks (offloaded memory), else ``None``.
    """

    k: Tensor
    v: Tensor
    landmarks: Tensor
    pending: Tensor
    num_tokens: int
    store: ChunkStore | None = None

    @property
    def num_chunks(self) -> int:
        return self.landmarks.shape[1]

    @property
    def offloaded(self) -> bool:
        return self.store is not None

    def to(self, *args, **kwargs) -> MemoryState:
        if self.store is not None:
            raise ValueError("an offloaded memory state cannot be moved or cast (its K/V live in host memory)")
        return replace(self, k=self.k.to(*args, **kwargs), v=self.v.to(*args, **kwargs),
                       landmarks=self.landmarks.to(*args, **kwargs), pending=self.pending.to(*args, **kwargs))

    def select(self, index: Tensor | slice) -> MemoryState:
        """Keep batch rows ``index`` (an offloaded state gets a new store with those rows)."""
        if self.store is None:
            return replace(self, k=self.k[index], v=self.v[index], landmarks=self.landmarks[index],
                           pending=self.pending[index])
        store = self.store.select(index)
        lmk = store.landmarks_view() if store.landmarks is not None else self.landmarks[index]
        return replace(self, k=self.k[index], v=self.v[index], landmarks=lmk, pending=self.pending[index],
                       store=store)

    def nbytes(self) -> int:
        """Bytes held on the compute device (with a store: its landmark buffer and the resident K/V)."""
        own = (self.k, self.v, self.pending) if self.store is not None else (self.k, self.v, self.landmarks,
                                                                              self.pending)
        total = sum(t.numel() * t.element_size() for t in own)
        return total + (self.store.device_nbytes() if self.store is not None else 0)

    def host_nbytes(self) -> int:
        """Bytes held in host memory (the store's K/V buffers; 0 when not offloaded)."""
        return self.store.host_nbytes() if self.store is not None else 0

    def take_gather_stats(self) -> GatherStats:
        """The host -> device gathers' costs since last taken (:meth:`ChunkStore.take_gather_stats`;
        empty when not offloaded)."""
        return self.store.take_gather_stats() if self.store is not None else GatherStats()


class ChunkMemory(nn.Module):
    """Chunking, optional bidirectional encoder, K/V projections and landmarks.

    Args:
        d_model: width of the source hidden states.
        chunk_size: S, tokens per chunk.
        kv_heads, head_dim: H and D of the keys and values.
        landmark_dim: d_r, width of the landmarks (default ``d_model``).
        retrieval_heads: H_r; landmarks are split into H_r heads of ``d_r / H_r``.
        landmark: ``"cls"`` (W_lmk on the encoder's CLS output; needs an encoder) or ``"mean"``
            (W_lmk on the mean of the chunk's encoded tokens).
        encoder_layers: 0 (no encoder) to a few; RAMba uses 1.
        encoder_heads, encoder_mlp_hidden: encoder geometry (defaults: d/64 heads, 8/3 d SwiGLU).
        encoder_kv_heads, encoder_qkv_bias: the encoder's KV heads (GQA) and q/k/v biases.
        chunk_norm: RMSNorm the source states before encoding (the published RAMba has none when
            it has an encoder, and one, before the mean, when it has none).
        k_norm: per-head RMSNorm on the keys (paired with an HSA layer's ``qk_norm``).
        norm_eps: epsilon of the chunk norm, the encoder's norms and ``k_norm``.
    """

    def __init__(self, d_model: int, *, chunk_size: int = 64, kv_heads: int = 1, head_dim: int = 64,
                 landmark_dim: int | None = None, retrieval_heads: int = 1, landmark: str = "cls",
                 encoder_layers: int = 1, encoder_heads: int | None = None,
                 encoder_mlp_hidden: int | None = None, encoder_kv_heads: int | None = None,
                 encoder_qkv_bias: bool = False, chunk_norm: bool = True, k_norm: bool = False,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        landmark_dim = landmark_dim or d_model
        if landmark not in LANDMARKS:
            raise ValueError(f"landmark must be one of {LANDMARKS}, got {landmark!r}")
        if landmark == "cls" and encoder_layers < 1:
            raise ValueError("landmark='cls' needs an encoder (encoder_layers >= 1); use landmark='mean'")
        if landmark_dim % retrieval_heads:
            raise ValueError(f"retrieval_heads={retrieval_heads} must divide landmark_dim={landmark_dim}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.d_model, self.chunk_size = d_model, chunk_size
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.retrieval_heads, self.landmark_dim, self.landmark = retrieval_heads, landmark_dim, landmark
        self.chunk_norm = RMSNorm(d_model, eps=norm_eps) if chunk_norm else nn.Identity()
        self.encoder = (ChunkEncoder(d_model, layers=encoder_layers, heads=encoder_heads,
                                     kv_heads=encoder_kv_heads, qkv_bias=encoder_qkv_bias,
                                     mlp_hidden=encoder_mlp_hidden, eps=norm_eps)
                        if encoder_layers > 0 else None)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if k_norm else nn.Identity()
        self.landmark_proj = nn.Linear(d_model, landmark_dim, bias=False)

    def empty_state(self, batch_size: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, offload: bool = False,
                    reserve_tokens: int = 0) -> MemoryState:
        """The memory before any token: zero chunks, nothing pending.

        ``offload=True``: K/V of complete chunks go to host memory (pinned under CUDA), landmarks stay
        on ``device``; ``reserve_tokens`` sizes the buffers up front (else they grow by doubling).
        """
        dtype = dtype or self.k_proj.weight.dtype
        kv = torch.zeros(batch_size, 0, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        lmk = torch.zeros(batch_size, 0, self.retrieval_heads, self.landmark_dim // self.retrieval_heads,
                          device=device, dtype=dtype)
        pending = torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)
        store = ChunkStore.create(self.chunk_size, device, reserve_tokens // self.chunk_size) if offload else None
        return MemoryState(kv, kv.clone(), lmk, pending, 0, store)

    def encode(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Complete chunks ``(B, n, S, d)`` -> k, v ``(B, n*S, H, D)``, landmarks ``(B, n, H_r, d_rh)``."""
        B, n, S, d = chunks.shape
        x = self.chunk_norm(chunks.reshape(B * n, S, d))
        if self.encoder is not None:
            tokens, cls = self.encoder(x)
        else:
            tokens, cls = x, None
        summary = cls if self.landmark == "cls" else tokens.mean(dim=1)
        k = self.k_norm(self.k_proj(tokens).view(B, n * S, self.kv_heads, self.head_dim))
        v = self.v_proj(tokens).view(B, n * S, self.kv_heads, self.head_dim)
        lmk = self.landmark_proj(summary).view(B, n, self.retrieval_heads, -1)
        return k, v, lmk

    def forward(self, h: Tensor, state: MemoryState | None = None) -> MemoryState:
        """Append the chunks completed by ``h`` ``(B, T, d)`` to ``state`` (returns a new state)."""
        if state is None:
            state = self.empty_state(h.shape[0], device=h.device, dtype=h.dtype)
        x = torch.cat([state.pending.to(h.dtype), h], dim=1) if state.pending.shape[1] else h
        S = self.chunk_size
        n = x.shape[1] // S
        # a copy: a slice would keep the whole of x, the segment's hidden states, alive in the cache
        pending = x[:, n * S:].clone()
        if n == 0:
            return replace(state, pending=pending, num_tokens=state.num_tokens + h.shape[1])
        k, v, lmk = self.encode(x[:, : n * S].reshape(x.shape[0], n, S, x.shape[2]))
        if state.store is not None:
            return self._append_offloaded(state, k, v, lmk, pending, state.num_tokens + h.shape[1])
        if state.num_chunks:
            k = torch.cat([state.k.to(k.dtype), k], 1)
            v = torch.cat([state.v.to(v.dtype), v], 1)
            lmk = torch.cat([state.landmarks.to(lmk.dtype), lmk], 1)
        return MemoryState(k, v, lmk, pending, state.num_tokens + h.shape[1])

    def _append_offloaded(self, state: MemoryState, k: Tensor, v: Tensor, lmk: Tensor, pending: Tensor,
                          num_tokens: int) -> MemoryState:
        """Offloaded memory: the new chunks go to the store; they stay resident as the state's k/v."""
        store = state.store
        assert store is not None
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("offloaded chunk memory is for inference: call model.eval() or run under "
                               "torch.no_grad() (training keeps the memory on the device)")
        if store.num_chunks != state.num_chunks:
            raise RuntimeError(f"this offloaded memory state ({state.num_chunks} chunks) was already continued "
                               f"(its store holds {store.num_chunks}): an offloaded cache can be continued once")
        k, v, lmk = k.detach(), v.detach(), lmk.detach()
        landmarks = store.append(k, v, lmk)
        return MemoryState(k, v, landmarks, pending, num_tokens, store)
