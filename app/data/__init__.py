"""Real text for language models: tokenizers, ``hsa data prepare``, token shards, the training
sampler, and natural-text passkey samples (the data source of ``hsa train --data`` is
:mod:`hsa_app.training.text_data`).

* :mod:`.tokenizer` — bytes, a local ``tokenizer.json`` or a BPE trained on the input; the tokenizer
  a run was trained with, and the check that data was prepared with it;
* :mod:`.sources` — reading documents from text files, folders, JSONL, Parquet/Arrow, saved datasets;
* :mod:`.prepare` — :func:`prepare`: deterministic, multi-process, resumable tokenization to shards;
* :mod:`.shards` — :func:`open_data`: the checked, memory-mapped view of a prepared folder;
* :mod:`.sampler` — packed training sequences in a deterministic order (exact resume);
* :mod:`.passkey` — the passkey protocol inside natural text.

Everything raises :class:`DataError` (a one-line message and an exit code) for bad data.
"""

from __future__ import annotations

from .errors import DataError
from .prepare import PrepareOptions, PrepareResult, prepare
from .sampler import PACKINGS, PackedSequences
from .shards import TokenData, TokenSplit, open_data
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "PACKINGS", "ByteTokenizer", "DataError", "HFTokenizer", "PackedSequences", "PrepareOptions", "PrepareResult",
    "TokenData", "TokenSplit", "Tokenizer", "load_tokenizer", "open_data", "prepare", "train_bpe",
]
