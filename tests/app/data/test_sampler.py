"""Packed sequences: coverage of an epoch, determinism, document packing never crossing documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hsa_app.data import PackedSequences, PrepareOptions, open_data, prepare
from hsa_app.data.errors import DataError
from hsa_app.tasks import IGNORE_INDEX


@pytest.fixture
def split(tmp_path: Path, corpus: Path):
    prepare(PrepareOptions([str(corpus)], val_fraction=0.2), tmp_path / "data", progress=False)
    return open_data(tmp_path / "data").split("train")


def test_concat_windows_cover_the_stream_once_per_epoch(split) -> None:
    seqs = PackedSequences(split, 64, "concat", seed=3)
    n = len(seqs)
    assert n == (split.num_tokens - 1) // 64
    stream = split.read(0, split.num_tokens)
    b = seqs.batch(0, n)  # exactly one epoch
    starts = sorted(int(seqs.starts[w]) for w in seqs.permutation(0))
    assert starts == list(range(0, n * 64, 64))
    for r in range(0, n, max(1, n // 7)):  # rows are windows of the stream, targets shifted by one
        w = int(seqs.permutation(0)[r])
        s = int(seqs.starts[w])
        assert torch.equal(b.input_ids[r], torch.from_numpy(stream[s:s + 64]))
        assert torch.equal(b.targets[r], torch.from_numpy(stream[s + 1:s + 65]))
    assert b.answer_mask.all() and b.answer_positions.shape == (n, 0)
    # deterministic, a new order each epoch, and the position is a function of the sequence number
    again = PackedSequences(split, 64, "concat", seed=3)
    assert torch.equal(again.batch(5, 4).input_ids, seqs.batch(5, 4).input_ids)
    assert not np.array_equal(seqs.permutation(0), seqs.permutation(1))
    pos = seqs.position(n + 5)
    assert (pos.epoch, pos.index) == (1, 5) and pos.epochs == pytest.approx(1 + 5 / n)


def test_document_packing_never_crosses_a_document(split) -> None:
    eos = 256
    seqs = PackedSequences(split, 48, "document", seed=0, pad_id=eos)
    expected = sum(-(-(int(d) - 1) // 48) for d in split.doc_lengths)
    assert len(seqs) == expected
    b = seqs.batch(0, len(seqs))
    real = b.targets != IGNORE_INDEX
    for r in range(len(seqs)):
        ids, tg, m = b.input_ids[r], b.targets[r], real[r]
        assert not (ids[m] == eos).any()  # no document boundary inside the inputs
        assert (tg[m] == eos).sum() <= 1 and (ids[~m] == eos).all()  # EOS only as the final target; padding
    assert int(real.sum()) == split.num_tokens - split.num_docs  # every token of every document predicted once


def test_too_little_data_for_one_sequence(split) -> None:
    with pytest.raises(DataError, match="not one training sequence of 1000000 tokens"):
        PackedSequences(split, 1_000_000)
