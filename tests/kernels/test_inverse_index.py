"""Inverse index of a selection: the Triton ``build_inverse_index`` vs its torch twin, exact equality.

The backward sums over the pairs in the index's order, so every returned tensor (values and dtypes)
must be bitwise identical to the twin's. CPU: Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); GPU (``-m gpu``): the benchmark's shape.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.index as index_mod
import pytest
import torch
from hsa_kernels.hsa_attention.index import build_inverse_index, build_inverse_index_torch

from .helpers import DEV, PoisonTorch, random_selection

KEYS = ("order", "seg_chunk", "seg_start", "seg_end", "seg_first", "seg_count")


def _assert_same(idx, num_chunks, seg):
    got = build_inverse_index(idx, num_chunks, seg)
    ref = build_inverse_index_torch(idx, num_chunks, seg)
    assert set(got) == set(ref) == set(KEYS)
    for name in KEYS:
        a, r = got[name], ref[name]
        assert a.dtype == r.dtype and a.shape == r.shape, (name, a.dtype, r.dtype, a.shape, r.shape)
        assert torch.equal(a, r), (name, (a != r).nonzero()[:5], a, r)
    _assert_valid(idx, num_chunks, seg, got)
    return got


def _assert_valid(idx, num_chunks, seg, inv):
    """Independent of the twin: each used segment holds <= seg pairs of its chunk, in token order, and the
    segments of a chunk tile exactly its pairs, in chunk order."""
    B, T, H, K = idx.shape
    flat = idx.reshape(-1).long().cpu()
    pair = torch.arange(flat.numel())
    bh = (pair // K) % H + (pair // (T * H * K)) * H
    key = torch.where((flat >= 0) & (flat < num_chunks), bh * num_chunks + flat, -1)
    order = inv["order"].long().cpu()
    seg_chunk, st, en = (inv[n].cpu() for n in ("seg_chunk", "seg_start", "seg_end"))
    first, count = inv["seg_first"].cpu(), inv["seg_count"].long().cpu()
    assert first.numel() == count.numel() == B * H * num_chunks
    used = seg_chunk >= 0
    assert int(used.sum()) == int(count.sum())
    assert (seg_chunk[int(count.sum()):] == -1).all()  # unused slots are the tail
    assert (seg_chunk[used].diff() >= 0).all()  # chunk-major segment order
    for c in range(B * H * num_chunks):
        mine = pair[key == c]
        segs = range(int(first[c]), int(first[c]) + int(count[c]))
        got = torch.cat([order[st[s]:en[s]] for s in segs]) if len(segs) else mine[:0]
        assert all(seg_chunk[s] == c and 0 < en[s] - st[s] <= seg for s in segs)
        assert torch.equal(got, mine), c


@pytest.mark.triton
@pytest.mark.parametrize(
    "B,T,H,K,S,seg,empty_frac",
    [
        pytest.param(1, 37, 1, 3, 8, 3, 0.0, id="odd-T-popular-chunks-split-into-segments-of-3"),
        pytest.param(2, 41, 3, 4, 8, 3, 0.3, id="B2-H3-extra-empty-slots"),
        pytest.param(3, 29, 2, 2, 4, 1, 0.5, id="one-pair-per-segment"),
        pytest.param(1, 50, 2, 8, 16, 1024, 0.0, id="one-segment-per-chunk"),
        pytest.param(2, 1, 2, 4, 8, 3, 0.0, id="T1-one-visible-chunk"),
    ],
)
def test_matches_torch_causal(B, T, H, K, S, seg, empty_frac):
    idx, _ = random_selection(B, T, H, K, S, device=DEV, q_offset=S, empty_frac=empty_frac)
    num_chunks = (T + S) // S + 1
    _assert_same(idx, num_chunks, seg)


@pytest.mark.triton
@pytest.mark.parametrize(
    "B,T,H,K,C,seg",
    [
        pytest.param(1, 33, 1, 5, 3, 3, id="repeated-and-out-of-range-ids"),
        pytest.param(2, 17, 3, 3, 1, 3, id="one-chunk"),
        pytest.param(2, 1, 1, 1, 1, 3, id="T1-one-chunk"),
        pytest.param(1, 1, 4, 6, 2, 2, id="T1-H4"),
        pytest.param(3, 23, 2, 4, 7, 5, id="B3-H2-C7"),
    ],
)
def test_matches_torch_random_ids(B, T, H, K, C, seg):
    idx = torch.randint(-2, C + 2, (B, T, H, K), dtype=torch.int32, device=DEV)
    _assert_same(idx, C, seg)


@pytest.mark.triton
@pytest.mark.parametrize("C", [1, 4])
def test_all_empty(C):
    idx = torch.full((2, 13, 2, 3), -1, dtype=torch.int32, device=DEV)
    inv = _assert_same(idx, C, 3)
    assert (inv["seg_chunk"] == -1).all() and (inv["seg_count"] == 0).all()


@pytest.mark.triton
def test_one_popular_chunk():
    # Every token picks chunk 0 (and half of them chunk 1): many segments of seg = 3 for one chunk.
    idx = torch.full((1, 40, 1, 2), -1, dtype=torch.int32, device=DEV)
    idx[:, :, :, 0] = 0
    idx[:, ::2, :, 1] = 1
    inv = _assert_same(idx, 2, 3)
    assert inv["seg_count"].tolist() == [14, 7]


@pytest.mark.triton
def test_strided_and_int64_indices():
    base = torch.randint(-1, 6, (2, 3, 19, 4), device=DEV)  # int64, (B, H, T, K) memory order
    idx = base.transpose(1, 2)                                # non-contiguous (B, T, H, K) view
    _assert_same(idx, 6, 3)
    _assert_same(idx.to(torch.int32), 6, 3)
    _assert_same(idx.to(torch.int16), 6, 4)


@pytest.mark.triton
def test_every_output_written(monkeypatch):
    # Buffers come back from torch.empty filled with -7: a slot the kernels forget shows up as a mismatch.
    monkeypatch.setattr(index_mod, "torch", PoisonTorch())
    idx, _ = random_selection(2, 45, 2, 4, 8, device=DEV, empty_frac=0.2)
    _assert_same(idx, 7, 3)


@pytest.mark.triton
def test_degenerate_no_pairs():
    idx = torch.zeros((2, 0, 1, 4), dtype=torch.int32, device=DEV)
    _assert_same(idx, 3, 3)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H,K,seg", [pytest.param(1, 65536, 1, 8, 1024, id="bench-64K"),
                                         pytest.param(2, 10001, 4, 8, 256, id="B2-H4-seg256")])
def test_matches_torch_gpu(B, T, H, K, seg):
    S = 64
    idx, _ = random_selection(B, T, H, K, S, device="cuda", empty_frac=0.05)
    num_chunks = T // S + 1
    got = build_inverse_index(idx, num_chunks, seg)
    ref = build_inverse_index_torch(idx, num_chunks, seg)
    for name in KEYS:
        assert got[name].dtype == ref[name].dtype and torch.equal(got[name], ref[name]), name
