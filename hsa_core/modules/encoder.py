"""Bidirectional chunk encoder (spec section 3, step 2).

Each chunk of S tokens is encoded on its own by a small non-causal transformer: a learned CLS
embedding is appended at the end (S+1 positions), RoPE runs over the local positions 0..S, attention
uses QK-norm, the MLP is SwiGLU, every sub-layer is pre-norm RMSNorm. Keys of a chunk thus carry only
local order; HSA itself stays position-free, which is what lets it extrapolate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import RMSNorm, SwiGLU
from .rope import apply_rope, rope_cos_sin


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional attention + SwiGLU over ``(N, L, d)``."""

    def __init__(self, d_model: int, heads: int, mlp_hidden: int | None, eps: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"encoder heads={heads} must divide d_model={d_model}")
        self.heads, self.head_dim = heads, d_model // heads
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=eps)
        self.k_norm = RMSNorm(self.head_dim, eps=eps)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        N, L, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(N, L, 3, self.heads, self.head_dim).unbind(2)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.out(a.transpose(1, 2).reshape(N, L, d))
        return x + self.mlp(self.mlp_norm(x))


class ChunkEncoder(nn.Module):
    """Encode chunks independently.

    Args:
        d_model: width of the source hidden states.
        layers: number of encoder layers (>= 1; "no encoder" is handled by the memory).
        heads: attention heads (default ``max(1, d_model // 64)``).
        mlp_hidden: SwiGLU width (default 8/3 d).
        rope_theta: RoPE base over local positions.
    """

    def __init__(self, d_model: int, *, layers: int = 1, heads: int | None = None,
                 mlp_hidden: int | None = None, rope_theta: float = 10000.0, eps: float = 1e-5) -> None:
        super().__init__()
        heads = heads or max(1, d_model // 64)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, mlp_hidden, eps) for _ in range(layers))
        self.norm = RMSNorm(d_model, eps=eps)
        self.rope_theta = rope_theta
        self.head_dim = d_model // heads

    def forward(self, chunks: Tensor) -> tuple[Tensor, Tensor]:
        """chunks ``(N, S, d)`` -> (tokens ``(N, S, d)``, cls ``(N, d)``)."""
        N, S, d = chunks.shape
        x = torch.cat([chunks, self.cls.to(chunks.dtype).expand(N, 1, d)], dim=1)
        pos = torch.arange(S + 1, device=chunks.device)
        cos, sin = rope_cos_sin(pos, self.head_dim, self.rope_theta, dtype=chunks.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        return x[:, :S], x[:, S]
