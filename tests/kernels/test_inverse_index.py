"""Inverse index of a selection: the Triton ``build_inverse_index`` vs its torch twin, exact equality.

The backward sums over the pairs in the index's order, so every returned tensor (values and dtypes)
must be bitwise identical to the twin's. CPU: Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); GPU (``-m gpu``): the benchmark's shape.
"""

from __future__ import annotations

import hsa_kernels.hsa_attention.function as fn
import hsa_kernels.hsa_attention.index as index_mod
import pytest
import torch
from hsa_kernels.hsa_attention.index import build_inverse_index, build_inverse_index_torch

from .helpers import PoisonTorch, random_selection

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KEYS = ("order", "seg_chunk", "seg_start", "seg_end", "seg_first", "seg_count")


def _assert_same(idx, num_chunks, seg, token_block=None):
    kw = {} if token_block is None else {"token_block": token_block}
    got = build_inverse_index(idx, num_chunks, seg, **kw)
    ref = build_inverse_index_torch(idx, num_chunks, seg, **kw)
    assert set(got) == set(ref) == set(KEYS)
    for name in KEYS:
        a, r = got[name], ref[name]
        assert a.dtype == r.dtype and a.shape == r.shape, (name, a.dtype, r.dtype, a.shape, r.shape)
        assert torch.equal(a, r), (name, (a != r).nonzero()[:5], a, r)
    _assert_valid(idx, num_chunks, seg, got, token_block)
    return got


def _assert_valid(idx, num_chunks, seg, inv, token_block=None):
    """Independent of the twin: each used segment holds <= seg pairs of its chunk, in token order, and the
    segments of a chunk tile exactly its pairs. With ``token_block`` the "chunks" are the groups
    (b, h, t // token_block, c), and the used segments come in group order (token-block-major)."""
    B, T, H, K = idx.shape
    ntb = 1 if token_block is None else -(-T // token_block)
    flat = idx.reshape(-1).long().cpu()
    pair = torch.arange(flat.numel())
    bh = (pair // K) % H + (pair // (T * H * K)) * H
    if token_block is not None:
        bh = bh * ntb + (pair // (H * K)) % T // token_block
    key = torch.where((flat >= 0) & (flat < num_chunks), bh * num_chunks + flat, -1)
    order = inv["order"].long().cpu()
    seg_chunk, st, en = (inv[n].cpu() for n in ("seg_chunk", "seg_start", "seg_end"))
    first, count = inv["seg_first"].cpu(), inv["seg_count"].long().cpu()
    assert first.numel() == count.numel() == B * H * ntb * num_chunks
    used = seg_chunk >= 0
    assert int(used.sum()) == int(count.sum())
    assert (seg_chunk[int(count.sum()):] == -1).all()  # unused slots are the tail
    assert (seg_chunk[used].diff() >= 0).all()  # group-major segment order
    for c in range(B * H * ntb * num_chunks):
        mine = pair[key == c]
        segs = range(int(first[c]), int(first[c]) + int(count[c]))
        got = torch.cat([order[st[s]:en[s]] for s in segs]) if len(segs) else mine[:0]
        assert all(seg_chunk[s] == c and 0 < en[s] - st[s] <= seg for s in segs)
        assert torch.equal(got, mine), c


@pytest.mark.triton
@pytest.mark.parametrize(
    "B,T,H,K,S,seg,empty_frac",
    [
        (1, 37, 1, 3, 8, 3, 0.0),      # odd T, popular chunks split into segments of 3
        (2, 41, 3, 4, 8, 3, 0.3),      # B>1, H>1, extra -1 slots
        (3, 29, 2, 2, 4, 1, 0.5),      # one pair per segment
        (1, 50, 2, 8, 16, 1024, 0.0),  # one segment per chunk
        (2, 1, 2, 4, 8, 3, 0.0),       # T=1 (one visible chunk)
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
        (1, 33, 1, 5, 3, 3),    # repeated ids in a row, out-of-range ids (>= C) count as empty
        (2, 17, 3, 3, 1, 3),    # num_chunks = 1
        (2, 1, 1, 1, 1, 3),     # T = 1, num_chunks = 1
        (1, 1, 4, 6, 2, 2),     # T = 1, H > 1
        (3, 23, 2, 4, 7, 5),
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
@pytest.mark.parametrize(
    "B,T,H,K,C,seg,token_block",
    [
        (1, 37, 1, 3, 6, 3, 8),      # odd T, blocks of 8 (last block of 5), segments of 3
        (2, 41, 3, 4, 7, 2, 5),      # B>1, H>1
        (3, 23, 2, 4, 1, 5, 4),      # C = 1
        (1, 30, 2, 3, 4, 1024, 1),   # one token per block
        (2, 19, 2, 3, 5, 3, 19),     # one block (token_block = T): the plain index, bit for bit
        (1, 19, 1, 3, 5, 3, 100),    # token_block > T
        (2, 1, 2, 4, 3, 3, 8),       # T = 1
    ],
)
def test_token_block_matches_torch(B, T, H, K, C, seg, token_block):
    idx = torch.randint(-2, C + 2, (B, T, H, K), dtype=torch.int32, device=DEV)
    idx[:, ::3, :1] = 0  # a popular chunk, split over segments inside each block
    inv = _assert_same(idx, C, seg, token_block)
    if token_block >= T:
        plain = build_inverse_index_torch(idx, C, seg)
        assert all(torch.equal(inv[n], plain[n]) for n in KEYS)


@pytest.mark.triton
def test_token_block_none_is_default():
    idx, _ = random_selection(2, 29, 2, 3, 8, device=DEV, empty_frac=0.2)
    for build in (build_inverse_index, build_inverse_index_torch):
        a, b = build(idx, 5, 3), build(idx, 5, 3, token_block=None)
        assert all(torch.equal(a[n], b[n]) for n in KEYS)
    with pytest.raises(ValueError, match="token_block"):
        build_inverse_index_torch(idx, 5, 3, token_block=0)


@pytest.mark.triton
def test_token_block_every_output_written(monkeypatch):
    monkeypatch.setattr(index_mod, "torch", PoisonTorch())
    idx, _ = random_selection(2, 45, 2, 4, 8, device=DEV, empty_frac=0.2)
    _assert_same(idx, 7, 3, token_block=6)


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


@pytest.mark.triton
def test_config_switch(monkeypatch):
    idx, _ = random_selection(1, 30, 1, 3, 8, device=DEV)
    ref = build_inverse_index_torch(idx, 4, 3)
    for impl in ("triton", "torch"):
        monkeypatch.setitem(fn.CONFIG, "index_impl", impl)
        got = fn.build_inverse_index(idx, 4, 3)
        assert all(torch.equal(got[n], ref[n]) for n in KEYS)
        blocked = fn.build_inverse_index(idx, 4, 3, token_block=7)
        ref_blocked = build_inverse_index_torch(idx, 4, 3, token_block=7)
        assert all(torch.equal(blocked[n], ref_blocked[n]) for n in KEYS)
    monkeypatch.setitem(fn.CONFIG, "index_impl", "nope")
    with pytest.raises(ValueError, match="index_impl"):
        fn.build_inverse_index(idx, 4, 3)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("token_block", [None, 4096])
@pytest.mark.parametrize("B,T,H,K,seg", [(1, 65536, 1, 8, 1024), (2, 10001, 4, 8, 256)])
def test_matches_torch_gpu(B, T, H, K, seg, token_block):
    S = 64
    idx, _ = random_selection(B, T, H, K, S, device="cuda", empty_frac=0.05)
    num_chunks = T // S + 1
    got = build_inverse_index(idx, num_chunks, seg, token_block)
    ref = build_inverse_index_torch(idx, num_chunks, seg, token_block)
    for name in KEYS:
        assert got[name].dtype == ref[name].dtype and torch.equal(got[name], ref[name]), name
