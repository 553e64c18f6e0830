"""Decode path (T == 1) vs the naive twin."""

from __future__ import annotations

import pytest
import torch
from hsa_kernels.hsa_attention import hsa_attention_triton
from hsa_kernels.hsa_decode import hsa_decode_naive, hsa_decode_triton

from .helpers import DEV, random_selection, rel_err


@pytest.mark.triton
@pytest.mark.parametrize("G,sink", [pytest.param(1, False, id="G1"), pytest.param(3, True, id="G3-sink"),
                                    pytest.param(16, False, id="G16")])
def test_decode(G, sink):
    B, H, D, S, K, C = 2, 2, 32, 16, 4, 6
    q = torch.randn(B, 1, G * H, D, device=DEV)
    k, v = torch.randn(2, B, C * S, H, D, device=DEV)
    idx, w = random_selection(B, 1, H, K, S, device=DEV, q_offset=C * S)
    o = hsa_decode_triton(q, k, v, idx, w, chunk_size=S, sink=sink)
    ref = hsa_decode_naive(q.double(), k.double(), v.double(), idx, w.double(), chunk_size=S, sink=sink)
    assert rel_err(o, ref) < 1e-5


@pytest.mark.gpu
def test_decode_reached_from_attention_bf16():
    B, H, G, D, S, K, C = 4, 1, 16, 64, 64, 8, 1024
    q = torch.randn(B, 1, G * H, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(2, B, C * S, H, D, device="cuda", dtype=torch.bfloat16)
    idx, w = random_selection(B, 1, H, K, S, device="cuda", q_offset=C * S)
    with torch.no_grad():
        o = hsa_attention_triton(q, k, v, idx, w, chunk_size=S)
    ref = hsa_decode_naive(q.float(), k.float(), v.float(), idx, w, chunk_size=S)
    assert rel_err(o, ref) < 1e-2
