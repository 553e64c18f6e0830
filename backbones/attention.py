"""Causal softmax attention backbones: full attention (``attention``) and sliding-window (``swa``).

Both use ``torch.nn.functional.scaled_dot_product_attention`` (flash / cuDNN / memory-efficient
kernels on CUDA, the math kernel on CPU) with rotary position embeddings (rotate-half convention,
``rope_theta``), grouped-query attention (``num_kv_heads`` divides ``num_heads``), optional QK-norm
(RMSNorm over the head dimension) and no biases by default. ``swa`` on CUDA in bf16/fp16 runs fla's
windowed kernel instead (unless the rows of a batch have seen different numbers of tokens, fewer than
``window - 1``) when fla is installed (:func:`hsa_backbones.fast_paths.sliding_window_kernel`):
SDPA has no sliding window of its own, so with a mask it computes every (query, key) score of the
segment, 8x the window's at 4K tokens and a 512-token window.

State (a KV cache, every tensor batch-first):

* ``k``, ``v``: ``(B, L, num_kv_heads, head_dim)``; keys are stored *after* RoPE, so a cached key
  never needs re-rotating. ``attention``: ``L`` grows with the tokens seen (starts at 0).
  ``swa``: ``L = window - 1`` fixed (the only past keys a new token can see); slots that hold no token
  yet are zeros and masked out by position.
* ``pos``: ``(B,)`` int64, the number of tokens seen (the absolute position of the next token), so
  RoPE positions continue across segments and the window mask knows which slots are valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsa_core.interfaces import Mixer, MixerState
from hsa_core.modules.common import RMSNorm
from hsa_core.modules.rope import rope_cos_sin

from .fast_paths import sliding_window_kernel, swa_forced_torch

ATTENTION_DEFAULTS: dict[str, Any] = {
    "num_heads": 8,
    "num_kv_heads": None,  # None: same as num_heads (plain multi-head attention)
    "head_dim": None,  # None: d_model // num_heads
    "rope_theta": 10000.0,
    "qk_norm": False,
    "bias": False,
    "norm_eps": 1e-6,
}
SWA_DEFAULTS: dict[str, Any] = {**ATTENTION_DEFAULTS, "window": 512}


def _rotate(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """RoPE on ``x`` ``(B, T, H, D)`` at integer ``positions`` ``(B, T)`` (rows may differ)."""
    b, t = positions.shape
    cos, sin = rope_cos_sin(positions.reshape(-1), x.shape[-1], theta, dtype=torch.float32)
    cos, sin = cos.view(b, t, 1, -1), sin.view(b, t, 1, -1)
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class CausalAttention(Mixer):
    """Causal multi-head (GQA) attention with RoPE; ``window=None`` is full attention.

    Args:
        d_model: width of the hidden states.
        num_heads: query heads.
        num_kv_heads: key/value heads (``None`` = ``num_heads``); must divide ``num_heads``.
        head_dim: per-head width (``None`` = ``d_model // num_heads``); must be even (RoPE).
        window: sliding window size (a token sees itself and the ``window - 1`` before it), or
            ``None`` for full causal attention.
        rope_theta: RoPE base.
        qk_norm: RMSNorm on queries and keys per head (before RoPE).
        bias: biases in the projections.
        norm_eps: epsilon of the QK-norms.
    """

    def __init__(self, d_model: int, *, num_heads: int = 8, num_kv_heads: int | None = None,
                 head_dim: int | None = None, window: int | None = None, rope_theta: float = 10000.0,
                 qk_norm: bool = False, bias: bool = False, norm_eps: float = 1e-6) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        head_dim = head_dim or d_model // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim % 2 or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive even number for RoPE, got {head_dim}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = d_model, num_heads, num_kv_heads, head_dim
        self.window, self.rope_theta = window, float(rope_theta)
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None

    # -- state ---------------------------------------------------------------------------------
    def _cache_len(self) -> int:
        return 0 if self.window is None else self.window - 1

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Empty KV cache: ``k``, ``v`` ``(B, L, H_kv, head_dim)`` (``L`` = 0 or ``window - 1``), ``pos`` ``(B,)``."""
        dtype = dtype or self.q_proj.weight.dtype
        shape = (batch_size, self._cache_len(), self.num_kv_heads, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }

    def state_size(self, batch_size: int = 1, seq_len: int = 0) -> int:
        """KV-cache elements after ``seq_len`` tokens (grows with ``seq_len`` for full attention)."""
        length = seq_len if self.window is None else self._cache_len()
        return 2 * batch_size * length * self.num_kv_heads * self.head_dim + batch_size

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """Attend causally over the cache and ``x``.

        Args:
            x: ``(B, T, d_model)``.
            state: KV cache from :meth:`init_state` or an earlier call.

        Returns:
            ``y (B, T, d_model)`` and the updated cache (when ``state`` or ``return_state`` is given).
        """
        b, t, _ = x.shape
        want_state = state is not None or return_state
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # .long(): a cache cast wholesale (ModelCache.to(dtype)) may have made the positions floats.
        start = state["pos"].long() if state is not None else torch.zeros(b, dtype=torch.long, device=x.device)
        positions = start[:, None] + torch.arange(t, device=x.device)[None, :]  # (B, T)
        q = _rotate(q, positions, self.rope_theta)
        k = _rotate(k, positions, self.rope_theta)

        if state is not None:
            k_all = torch.cat([state["k"].to(k.dtype), k], dim=1)
            v_all = torch.cat([state["v"].to(v.dtype), v], dim=1)
            past = state["k"].shape[1]
        else:
            k_all, v_all, past = k, v, 0
        y = self._attend(q, k_all, v_all, positions, start, past)
        y = self.o_proj(y.reshape(b, t, self.num_heads * self.head_dim))
        if not want_state:
            return y, None
        if state is None:  # the full pass starts from the empty cache (zeros for swa slots)
            empty = self.init_state(b, device=x.device, dtype=k.dtype)
            k_all = torch.cat([empty["k"], k], dim=1)
            v_all = torch.cat([empty["v"], v], dim=1)
        if self.window is not None:
            # Keep exactly the window - 1 newest slots: all a future token can attend to. Copied: a
            # slice would keep the whole segment's keys and values alive in the carried cache.
            keep = self._cache_len()
            k_all, v_all = k_all[:, k_all.shape[1] - keep:].clone(), v_all[:, v_all.shape[1] - keep:].clone()
        return y, {"k": k_all, "v": v_all, "pos": start + t}

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, start: Tensor, past: int) -> Tensor:
        """Attention of ``q`` ``(B, T, H, head_dim)`` over ``past`` cached keys and the new ones (``k``, ``v``
        ``(B, past + T, H_kv, head_dim)``); returns ``(B, T, H, head_dim)``."""
        out = self._attend_windowed(q, k, v, start, past)
        if out is not None:
            return out
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, *, D)
        if past == 0 and self.window is None:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        else:
            # Absolute key positions: the cache holds the `past` tokens before `start` (for swa some
            # of those slots may precede position 0, i.e. hold no token yet, and are masked).
            key_pos = start[:, None] + torch.arange(-past, q.shape[1], device=q.device)[None, :]  # (B, L)
            diff = positions[:, :, None] - key_pos[:, None, :]  # (B, T, L)
            mask = (diff >= 0) & (key_pos[:, None, :] >= 0)
            if self.window is not None:
                mask &= diff < self.window
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[:, None])
        return out.transpose(1, 2)

    def _attend_windowed(self, q: Tensor, k: Tensor, v: Tensor, start: Tensor, past: int) -> Tensor | None:
        """:meth:`_attend` through fla's windowed kernel, or None where it does not apply (SDPA then)."""
        kernel = self._window_kernel(q)
        if kernel is None:
            return None
        if past:
            # The cache's first slots hold no token until window - 1 were seen; fla's kernel cannot mask
            # them, so they are cut off, which needs every row to have seen as many tokens.
            fewest, most = torch.stack((past - start).clamp(min=0).aminmax()).tolist()  # one device sync
            if fewest != most:
                return None
            k, v, past = k[:, most:], v[:, most:], past - most
        if past:
            # fla's kernel lines queries and keys up by index: `past` zero queries go in front, so that
            # query i and key j are i - j positions apart; their outputs are dropped.
            q = torch.cat([q.new_zeros(q.shape[0], past, *q.shape[2:]), q], dim=1)
        return kernel(q, k, v, window_size=self.window)[:, past:]

    def _window_kernel(self, q: Tensor) -> Callable | None:
        """fla's windowed kernel where it applies, else None (SDPA): ``swa`` on a device and in a dtype it
        runs in (:func:`_kernel_runs_on`), more than one token (a decode step reads ``window`` keys either
        way) and a head dim it takes (<= 256)."""
        if (self.window is None or q.shape[1] < 2 or self.head_dim > 256 or not _kernel_runs_on(q)
                or swa_forced_torch()):
            return None
        return sliding_window_kernel()


def _kernel_runs_on(q: Tensor) -> bool:
    """fla's Triton kernel runs on CUDA; in bf16/fp16 (in fp32 its dots would round through tf32, where SDPA's
    fp32 path does not)."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def build_attention(d_model: int, **options: Any) -> CausalAttention:
    """Factory of the ``attention`` kind (full causal attention; options: :data:`ATTENTION_DEFAULTS`)."""
    return CausalAttention(d_model, window=None, **options)


def build_swa(d_model: int, **options: Any) -> CausalAttention:
    """Factory of the ``swa`` kind (sliding-window attention; options: :data:`SWA_DEFAULTS`)."""
    return CausalAttention(d_model, **options)
