"""Perplexity by position: segment-wise prefill equals one full pass, buckets add up, documents are
chosen as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hsa_app.data.errors import DataError
from hsa_app.evaluation.perplexity import bucketize, fine_edges, position_nll, select_documents


def test_segmented_nll_equals_one_full_pass(tiny_model) -> None:
    torch.manual_seed(0)
    docs = [np.random.default_rng(i).integers(1, 96, size=130) for i in range(3)]
    L = 100
    full_sum, full_count = position_nll(tiny_model, docs, L, eos_id=0, segment_len=L)
    seg_sum, seg_count = position_nll(tiny_model, docs, L, eos_id=0, segment_len=17, max_batch_tokens=150)
    assert (full_count == 3).all() and (seg_count == full_count).all()
    assert np.allclose(full_sum, seg_sum, atol=1e-4)
    # and equal to the plain cross-entropy of one forward over [EOS, doc[:L]]
    x = torch.tensor(np.stack([np.concatenate([[0], d[:L]]) for d in docs]))
    with torch.no_grad():
        logits = tiny_model(x[:, :-1]).logits
    ref = F.cross_entropy(logits.reshape(-1, 96), x[:, 1:].reshape(-1), reduction="none").view(3, L).sum(0)
    assert np.allclose(full_sum, ref.double().numpy(), atol=1e-4)


def test_buckets_and_document_choice() -> None:
    assert fine_edges(1000) == [0, 128, 256, 512, 1000] and fine_edges(1024) == [0, 128, 256, 512, 1024]
    nll = np.arange(10, dtype=np.float64)
    buckets = bucketize(nll, np.ones(10, dtype=np.int64), [0, 4, 10])
    assert [(b.start, b.end, b.tokens) for b in buckets] == [(0, 4, 4), (4, 10, 6)]
    assert buckets[0].nll == pytest.approx(1.5) and buckets[1].ppl == pytest.approx(np.exp(6.5))
    lengths = np.array([50, 5000, 300, 7000, 4096])
    chosen, kept, dropped = select_documents(lengths, [1024, 4096, 65536], docs=8)
    assert chosen == [1, 3, 4] and kept == [1024, 4096] and dropped == [65536]
    assert select_documents(lengths, [1024, 4096], docs=1)[0] == [1]
    with pytest.raises(DataError, match="no validation document has 8k tokens"):
        select_documents(lengths, [8192], docs=2)
