"""Inverse index of a selection: the Triton ``build_inverse_index`` vs its torch twin, exact equality.

The backward sums over the pairs in the index's order, so every returned tensor (values and dtypes)
must be bitwise identical to the twin's. CPU: Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); GPU (``-m gpu``): the benchmark's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import hsa_kernels.hsa_attention.index as index_mod
import pytest
import torch
from hsa_kernels.hsa_attention.index import build_inverse_index, build_inverse_index_torch

from .helpers import DEV, PoisonTorch, random_selection

KEYS = ("order", "seg_chunk", "seg_start", "seg_end", "seg_first", "seg_count")


@dataclass(frozen=True)
class IndexCase:
    """A selection of shape (B, T, H, K) and the index's segment size."""

    B: int  # batch
    T: int  # tokens
    H: int  # KV heads
    K: int  # slots per token
    seg: int  # most pairs per segment


@dataclass(frozen=True)
class CausalCase(IndexCase):
    """A causal random selection (``random_selection``) whose first token sits at position S: all see a chunk."""

    S: int  # chunk size
    empty_frac: float  # share of the slots emptied on top


@dataclass(frozen=True)
class RandomIdsCase(IndexCase):
    """Ids drawn uniformly from -2 .. C + 1: empty, repeated and out-of-range ones."""

    C: int  # chunks


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
    "case",
    [
        pytest.param(CausalCase(B=1, T=37, H=1, K=3, S=8, seg=3, empty_frac=0.0),
                     id="odd-T-popular-chunks-split-into-segments-of-3"),
        pytest.param(CausalCase(B=2, T=41, H=3, K=4, S=8, seg=3, empty_frac=0.3), id="B2-H3-extra-empty-slots"),
        pytest.param(CausalCase(B=3, T=29, H=2, K=2, S=4, seg=1, empty_frac=0.5), id="one-pair-per-segment"),
        pytest.param(CausalCase(B=1, T=50, H=2, K=8, S=16, seg=1024, empty_frac=0.0), id="one-segment-per-chunk"),
        pytest.param(CausalCase(B=2, T=1, H=2, K=4, S=8, seg=3, empty_frac=0.0), id="T1-one-visible-chunk"),
    ],
)
def test_matches_torch_causal(case: CausalCase) -> None:
    idx, _ = random_selection(B=case.B, T=case.T, H=case.H, K=case.K, S=case.S, device=DEV, q_offset=case.S,
                              empty_frac=case.empty_frac)
    num_chunks = (case.T + case.S) // case.S + 1
    _assert_same(idx, num_chunks, case.seg)


@pytest.mark.triton
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(RandomIdsCase(B=1, T=33, H=1, K=5, C=3, seg=3), id="repeated-and-out-of-range-ids"),
        pytest.param(RandomIdsCase(B=2, T=17, H=3, K=3, C=1, seg=3), id="one-chunk"),
        pytest.param(RandomIdsCase(B=2, T=1, H=1, K=1, C=1, seg=3), id="T1-one-chunk"),
        pytest.param(RandomIdsCase(B=1, T=1, H=4, K=6, C=2, seg=2), id="T1-H4"),
        pytest.param(RandomIdsCase(B=3, T=23, H=2, K=4, C=7, seg=5), id="B3-H2-C7"),
    ],
)
def test_matches_torch_random_ids(case: RandomIdsCase) -> None:
    idx = torch.randint(-2, case.C + 2, (case.B, case.T, case.H, case.K), dtype=torch.int32, device=DEV)
    _assert_same(idx, case.C, case.seg)


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
    idx, _ = random_selection(B=2, T=45, H=2, K=4, S=8, device=DEV, empty_frac=0.2)
    _assert_same(idx, 7, 3)


@pytest.mark.triton
def test_degenerate_no_pairs():
    idx = torch.zeros((2, 0, 1, 4), dtype=torch.int32, device=DEV)
    _assert_same(idx, 3, 3)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("case", [pytest.param(IndexCase(B=1, T=65536, H=1, K=8, seg=1024), id="bench-64K"),
                                  pytest.param(IndexCase(B=2, T=10001, H=4, K=8, seg=256), id="B2-H4-seg256")])
def test_matches_torch_gpu(case: IndexCase) -> None:
    S = 64
    idx, _ = random_selection(B=case.B, T=case.T, H=case.H, K=case.K, S=S, device="cuda", empty_frac=0.05)
    num_chunks = case.T // S + 1
    got = build_inverse_index(idx, num_chunks, case.seg)
    ref = build_inverse_index_torch(idx, num_chunks, case.seg)
    for name in KEYS:
        assert got[name].dtype == ref[name].dtype and torch.equal(got[name], ref[name]), name
