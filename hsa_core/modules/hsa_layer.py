"""The HSA layer (spec section 6): query projection, sparse chunk attention, output projection."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..ops import hsa_attention
from .chunk_memory import MemoryState
from .common import RMSNorm
from .retrieval import Selection

# Options a layout may set on an ``hsa`` layer (the memory geometry comes from its memory).
# norm_eps None -> model.norm_eps. residual False: the layer's output is not added to the stream
# but only feeds its MLP, h + MLP(RMSNorm(h + HSA(h))) (the authors' HSA+MLP sub-layer in their
# SWA+HSA model, reset_hsa_residual off); needs `mlp: true`.
HSA_LAYER_DEFAULTS: dict[str, Any] = {"num_heads": 16, "qk_norm": False, "sink": False, "norm_eps": None,
                                      "residual": True}


class HSALayer(nn.Module):
    """``W_O concat_g sum_j w_j softmax(q K_c^T / sqrt(D)) V_c`` with ``q = W_Q RMSNorm(x)``.

    No residual (the model's block adds it) and no positional encoding on q (NoPE).

    Args:
        d_model: width of the stream.
        num_heads: HQ query heads; a multiple of ``kv_heads``.
        kv_heads, head_dim, chunk_size: geometry of the memory this layer reads.
        qk_norm: per-head RMSNorm on the queries (pair with the memory's ``k_norm``).
        sink: one extra logit fixed at 0 with a zero value in every chunk's softmax.
        norm_eps: epsilon of the input RMSNorm and the query norm (``None``: 1e-5).
        residual: read by :class:`~hsa_core.model.RetrievalBlock`: add the output to the stream
            (default), or only feed it to the block's MLP.
    """

    def __init__(self, d_model: int, *, kv_heads: int, head_dim: int, chunk_size: int, num_heads: int = 16,
                 qk_norm: bool = False, sink: bool = False, norm_eps: float | None = 1e-5,
                 residual: bool = True) -> None:
        super().__init__()
        norm_eps = 1e-5 if norm_eps is None else norm_eps
        self.residual = residual
        if num_heads % kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of kv_heads={kv_heads}")
        self.num_heads, self.kv_heads, self.head_dim = num_heads, kv_heads, head_dim
        self.chunk_size, self.sink = chunk_size, sink
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def forward(self, x: Tensor, memory: MemoryState, selection: Selection, *, position: int = 0) -> Tensor:
        """x ``(B, T, d)``, the memory and a selection for these T tokens -> ``(B, T, d)``.

        ``position`` is the absolute position of ``x[:, 0]`` (the retrieval-layer contract passes it);
        HSA needs none of its own, since the selection already obeys the causal rule.
        """
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(self.norm(x)).view(B, T, self.num_heads, self.head_dim))
        indices, weights = selection
        if indices.shape[2] != self.kv_heads:  # one retrieval head shared by every KV head
            indices = indices.expand(B, T, self.kv_heads, indices.shape[-1])
            weights = weights.expand(B, T, self.kv_heads, weights.shape[-1])
        o = hsa_attention(q, memory.k.to(q.dtype), memory.v.to(q.dtype), indices, weights,
                          chunk_size=self.chunk_size, sink=self.sink)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))
