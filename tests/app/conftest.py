"""Fixtures of the application's tests: one CPU thread per process, a small corpus written on the fly.

One thread: the CI runs test files in parallel on two cores, and PyTorch's OpenMP threads spinning
against each other make small models several times slower than a single thread.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

WORDS = ["the", "state", "of", "a", "recurrent", "model", "is", "a", "fixed", "size", "summary;", "chunk", "memory",
         "keeps", "the", "past", "exactly", "and", "sparse", "attention", "reads", "the", "chunks", "a", "token",
         "selects", "—", "naïve", "café,", "東京,", "✓"]


def write_corpus(root: Path, docs: int = 24, seed: int = 0, min_words: int = 40, max_words: int = 900) -> Path:
    """``docs`` text files of random sentences (some non-ASCII) under ``root/corpus`` (two folders)."""
    rng = random.Random(seed)
    corpus = root / "corpus"
    for i in range(docs):
        sub = corpus / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        n = rng.randint(min_words, max_words)
        text = " ".join(rng.choice(WORDS) for _ in range(n))
        (sub / f"doc{i:03d}.txt").write_text(f"Document {i}.\n{text}\n", encoding="utf-8")
    return corpus


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path)
