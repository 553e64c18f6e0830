"""Bidirectional chunk encoder (spec section 3, step 2).

Each chunk of S tokens is encoded on its own by a small non-causal transformer: a learned CLS
embedding is appended at the end (S+1 positions), RoPE runs over the local positions 0..S, attention
uses QK-norm, the MLP is SwiGLU, every sub-layer is pre-norm RMSNorm. Keys of a chunk thus carry only
local order; HSA itself stays position-free, which is what lets it extrapolate.

The published encoder (RAMba's) also has biases on its q/k/v projections and, in the authors'
default config, grouped-query attention (4 KV heads for 16 query heads): ``qkv_bias`` and
``kv_heads``. One fused ``qkv`` projection holds ``[q | k | v]`` rows
(``(heads + 2 * kv_heads) * head_dim`` outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import RMSNorm, SwiGLU
from .rope import apply_rope, rope_cos_sin


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional attention + SwiGLU over ``(N, L, d)``."""

    def __init__(self, d_model: int, heads: int, mlp_hidden: int | None, eps: float, *,
                 kv_heads: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"encoder heads={heads} must divide d_model={d_model}")
        kv_heads = kv_heads or heads
        if heads % kv_heads:
            raise ValueError(f"encoder kv_heads={kv_heads} must divide heads={heads}")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d_model // heads
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.qkv = nn.Linear(d_model, (heads + 2 * kv_heads) * self.head_dim, bias=qkv_bias)
        if qkv_bias:
            nn.init.zeros_(self.qkv.bias)
        self.q_norm = RMSNorm(self.head_dim, eps=eps)
        self.k_norm = RMSNorm(self.head_dim, eps=eps)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        N, L, d = x.shape
        hd, kvd = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.qkv(self.attn_norm(x)).split([hd, kvd, kvd], dim=-1)
        q = apply_rope(self.q_norm(q.view(N, L, self.heads, self.head_dim)), cos, sin)
        k = apply_rope(self.k_norm(k.view(N, L, self.kv_heads, self.head_dim)), cos, sin)
        v = v.view(N, L, self.kv_heads, self.head_dim)
        if self.kv_heads != self.heads:  # GQA: each KV head serves heads / kv_heads query heads
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.out(a.transpose(1, 2).reshape(N, L, d))
        return x + self.mlp(self.mlp_norm(x))


class ChunkEncoder(nn.Module):
    """Encode chunks independently.

    Args:
        d_model: width of the source hidden states.
        layers: number of encoder layers (>= 1; "no encoder" is handled by the memory).
        heads: attention heads (default ``max(1, d_model // 64)``).
        kv_heads: KV heads of the attention (default ``heads``; fewer = grouped-query attention).
        qkv_bias: biases on the q/k/v projections (initialised to zero).
        mlp_hidden: SwiGLU width (default 8/3 d).
        rope_theta: RoPE base over local positions.
        eps: epsilon of every RMSNorm in the encoder.
    """

    def __init__(self, d_model: int, *, layers: int = 1, heads: int | None = None, kv_heads: int | None = None,
                 qkv_bias: bool = False, mlp_hidden: int | None = None, rope_theta: float = 10000.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        heads = heads or max(1, d_model // 64)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, mlp_hidden, eps, kv_heads=kv_heads,
                                                 qkv_bias=qkv_bias) for _ in range(layers))
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
