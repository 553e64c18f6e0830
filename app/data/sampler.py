"""Packed training sequences over a token split, in a deterministic order with an exact position.

A *window* is ``seq_len + 1`` consecutive tokens (inputs are the first ``seq_len``, targets the last
``seq_len``). Two packings:

* ``concat`` (default): the split's documents, each followed by EOS, form one stream cut into windows
  at a stride of ``seq_len``. A sequence may hold the end of one document, EOS, and the start of
  the next: the backbone state and the chunk memory run on across the EOS inside a sequence (the
  model learns from the EOS that what follows is unrelated, as in GPT-style packing), and HSA may
  select chunks of the previous document.
* ``document``: windows never cross a document: a document is cut into windows of its own, the last
  one padded (padding has no loss). Every sequence then starts with a fresh backbone state and an
  empty chunk memory at a document start or inside one document; nothing is shared between
  documents. Costs the padding; the better choice when documents are long.

Order: sequence ``g`` of the run (``g = step * batch_size + row``) is window ``perm_e[g mod n]`` of
epoch ``e = g // n``, where ``perm_e`` is a permutation of the ``n`` windows seeded by ``(seed, e)``.
The data position after ``step`` steps is therefore a function of the step alone, which makes
resuming exact: a run resumed at step ``k`` reads exactly the windows an uninterrupted run reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..tasks.base import IGNORE_INDEX, TaskBatch
from .errors import DataError
from .shards import TokenSplit

PACKINGS = ("concat", "document")


@dataclass(frozen=True)
class DataPosition:
    """Where the sampler is: ``epoch`` and the next sequence ``index`` inside it (of ``windows``)."""

    epoch: int
    index: int
    windows: int

    @property
    def epochs(self) -> float:
        return self.epoch + self.index / self.windows


class PackedSequences:
    """The windows of one split and their order.

    Args:
        split: a :class:`~hsa_app.data.shards.TokenSplit`.
        seq_len: tokens per training sequence.
        packing: ``concat`` or ``document`` (see the module docstring).
        seed: seeds the per-epoch permutations.
        pad_id: the input id at padded positions (``document`` packing; no loss there).
    """

    def __init__(self, split: TokenSplit, seq_len: int, packing: str = "concat", seed: int = 0,
                 pad_id: int = 0) -> None:
        if packing not in PACKINGS:
            raise DataError(f"packing {packing!r}: allowed {', '.join(PACKINGS)}", 2)
        self.split, self.seq_len, self.packing, self.seed, self.pad_id = split, seq_len, packing, seed, pad_id
        if packing == "concat":
            n = (split.num_tokens - 1) // seq_len
            self.starts = np.arange(n, dtype=np.int64) * seq_len
            self.ends = self.starts + seq_len + 1
        else:  # per document: ceil((d - 1) / L) windows at o, o + L, ...; the last one ends with the document
            offsets, lengths = split.doc_offsets[:-1], split.doc_lengths
            counts = np.maximum(0, -(-(lengths - 1) // seq_len))
            first = np.repeat(np.cumsum(counts) - counts, counts)  # index of each document's first window
            j = np.arange(int(counts.sum()), dtype=np.int64) - first
            self.starts = np.repeat(offsets, counts) + j * seq_len
            self.ends = np.minimum(self.starts + seq_len + 1, np.repeat(offsets + lengths, counts))
        if self.starts.size == 0:
            raise DataError(f"the {split.name} split has {split.num_tokens:,} tokens: not one training sequence of "
                            f"{seq_len} tokens (+1 target) fits; use a shorter --seq-len or more data")
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts.size)

    def permutation(self, epoch: int) -> np.ndarray:
        """``(n,)`` the window order of ``epoch`` (cached for the current epoch)."""
        if epoch != self._perm_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5EED]))
            self._perm = rng.permutation(len(self))
            self._perm_epoch = epoch
        return self._perm

    def position(self, sequence: int) -> DataPosition:
        """The position of the run's ``sequence``-th sequence (0-based)."""
        return DataPosition(sequence // len(self), sequence % len(self), len(self))

    def window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``w`` as ``(inputs (L,), targets (L,))`` int64; padding: inputs ``pad_id``, targets
        ``IGNORE_INDEX``."""
        L = self.seq_len
        toks = self.split.read(int(self.starts[w]), int(self.ends[w]))
        inputs = np.full(L, self.pad_id, dtype=np.int64)
        targets = np.full(L, IGNORE_INDEX, dtype=np.int64)
        n = toks.size - 1
        inputs[:n] = toks[:-1]
        targets[:n] = toks[1:]
        return inputs, targets

    def batch(self, first_sequence: int, batch_size: int) -> TaskBatch:
        """Sequences ``first_sequence .. + batch_size`` of the run as a :class:`TaskBatch` whose
        ``answer_mask`` is every real target (the language-model loss) and which has no answer
        positions (``(B, 0)``)."""
        rows_in, rows_t = [], []
        for g in range(first_sequence, first_sequence + batch_size):
            pos = self.position(g)
            i, t = self.window(int(self.permutation(pos.epoch)[pos.index]))
            rows_in.append(i)
            rows_t.append(t)
        return lm_batch(torch.from_numpy(np.stack(rows_in)), torch.from_numpy(np.stack(rows_t)))


def lm_batch(input_ids: torch.Tensor, targets: torch.Tensor) -> TaskBatch:
    """A language-model :class:`TaskBatch`: loss on every target that is not ``IGNORE_INDEX``."""
    B = input_ids.shape[0]
    return TaskBatch(input_ids, targets, targets != IGNORE_INDEX, torch.zeros(B, 0, dtype=torch.long),
                     torch.zeros(B))
