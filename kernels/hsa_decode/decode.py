"""HSA decode: one new token x the G query heads of each KV head (T == 1, no autograd).

``hsa_decode_triton(q (B,1,HQ,D), k, v (B,C*S,H,D), indices, weights (B,1,H,K), *, chunk_size,
scale=None, sink=False) -> (B,1,HQ,D)``. Reached from ``hsa_attention_triton`` (and so from the
``hsa_core.ops`` dispatch) when T == 1 on CUDA and no gradient is needed.

Schedule: the query-outer forward kernel's program (G heads as the rows of one tile, the K chosen
chunks loaded straight from the KV cache at id*S) without the log-sum-exp store that only training
needs. Its naive twin is the reference attention at T == 1 (``naive.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hsa_attention.forward import hsa_attention_fwd
from ..hsa_attention.launch import contiguous_rows


def hsa_decode_triton(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Tensor, *, chunk_size: int,
                      scale: float | None = None, sink: bool = False) -> Tensor:
    """Attention of one token; same contract as :func:`hsa_core.ops.hsa_attention` at T == 1.

    Raises:
        ValueError: ``q`` holds more than one token.
    """
    if q.shape[1] != 1:
        raise ValueError(f"decode takes one token, got T={q.shape[1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, _ = hsa_attention_fwd(contiguous_rows(q), contiguous_rows(k), contiguous_rows(v),
                             indices.to(torch.int32).contiguous(), weights.contiguous(), chunk_size, scale, sink,
                             schedule="query", store_lse=False)
    return o


__all__ = ["hsa_decode_triton"]
