"""The passkey protocol inside natural text, in a real tokenizer (``hsa eval passkey --filler
text:DIR``; ``hsa train --data DIR --passkey-mix F`` trains on it).

One sample of ``T`` tokens, every piece tokenized on its own with the model's tokenizer::

    EOS "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there."
    <text> " The pass key is" K ". Remember it." K " is the pass key." <text>
    " What is the pass key? The pass key is" K

``K`` is the tokenization of ``" " + digits`` (``digits`` random decimal digits, default 5), and the
two ``<text>`` pieces are one contiguous run of tokens from the data's documents (a random offset,
wrapping around the split), cut where the needle goes: at relative ``depth``, with at least
``min_gap`` tokens between the needle and the question. The run's EOS tokens (the ends of the
split's documents) are left out: the sample is one prompt, and an EOS inside it would tell a model
trained on packed documents that the needle and the instruction belong to an earlier, unrelated
document (in the validation split of the real-text corpus, 4 to 5 of 40 samples at 16K-64K had one
between the needle and the question). Documents that the run crosses follow each other directly. The
answer is teacher-forced, like the token-space ``passkey`` task: the sample counts when every token
of the last ``K`` is the argmax. Keys are drawn until ``K`` has the same number of tokens as the
task's reference key, so every sample of a batch has the same number of answer tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from ..tasks.base import TaskBatch, as_generator, depth_to_start, randint
from .errors import DataError
from .shards import TokenSplit
from .tokenizer import Tokenizer

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")


class TextPasskeyTask:
    """The :class:`~hsa_app.tasks.base.Task` interface (``sample``, ``num_answers``,
    ``min_length``, ``options``, ``name``) over natural-text filler.

    Args:
        tokenizer: the model's tokenizer.
        split: where the filler comes from (the validation split for evaluation).
        digits: decimal digits of the key.
        min_gap: filler tokens at least between the needle and the question.
        source: the data folder (recorded in ``options``).
    """

    name: ClassVar[str] = "passkey"

    def __init__(self, tokenizer: Tokenizer, split: TokenSplit, *, digits: int = 5, min_gap: int = 0,
                 seed: int = 0, source: str = "") -> None:
        if digits < 1:
            raise DataError(f"passkey digits must be >= 1, got {digits}", 2)
        if split.num_tokens < 1:
            raise DataError(f"the {split.name} split is empty: no text for the passkey filler")
        self.tok, self.split, self.digits, self.min_gap = tokenizer, split, digits, int(min_gap or 0)
        # filler_eos: recorded because samples made before 2026-12-02 kept the EOS tokens (other draws)
        self.options: dict[str, Any] = {"filler": f"text:{source}", "split": split.name, "digits": digits,
                                        "min_gap": self.min_gap, "seed": seed, "filler_eos": "left out"}
        enc = self._enc
        self.intro = np.concatenate([[tokenizer.eos_id], enc(INTRO)])
        self.needle_parts = (enc(" The pass key is"), enc(". Remember it."), enc(" is the pass key."))
        self.question = enc(" What is the pass key? The pass key is")
        g = as_generator(seed + 104729)
        lens = [len(self._key_ids(g)) for _ in range(32)]
        self.key_tokens = max(set(lens), key=lambda n: (lens.count(n), -n))

    def _enc(self, text: str) -> np.ndarray:
        return self.tok.encode(text).astype(np.int64)

    def _key_ids(self, g: torch.Generator) -> np.ndarray:
        digits = "".join(str(randint(g, 0, 10)) for _ in range(self.digits))
        return self._enc(" " + digits)

    def key(self, g: torch.Generator) -> np.ndarray:
        """A random key whose tokenization has :attr:`key_tokens` tokens."""
        for _ in range(1000):
            ids = self._key_ids(g)
            if len(ids) == self.key_tokens:
                return ids
        raise DataError(f"the tokenizer never gives {self.key_tokens}-token keys of {self.digits} digits")

    @property
    def num_answers(self) -> int:
        return self.key_tokens

    def _fixed(self) -> int:
        a, b, c = self.needle_parts
        return len(self.intro) + len(a) + len(b) + len(c) + 2 * self.key_tokens + len(self.question) + self.key_tokens

    def min_length(self) -> int:
        return self._fixed() + self.min_gap + 1

    def _filler(self, n: int, g: torch.Generator) -> np.ndarray:
        """``n`` tokens of the split from a random offset on (wrapping around), without its EOS tokens."""
        total = self.split.num_tokens
        pos = randint(g, 0, total)
        parts, have, read = [], 0, 0
        while have < n:
            if read > total + n:  # a whole pass gave fewer than n text tokens
                raise DataError(f"the {self.split.name} split holds fewer than {n} tokens of text besides EOS: "
                                "too little for the passkey filler")
            take = min(n - have, total - pos)  # what is still missing: EOS tokens are rare
            chunk = self.split.read(pos, pos + take)
            chunk = chunk[chunk != self.tok.eos_id]
            parts.append(chunk)
            have += len(chunk)
            read += take
            pos = (pos + take) % total
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def sample(self, batch_size: int, seq_len: int, seed: int | torch.Generator = 0,
               depth: float | None = None) -> TaskBatch:
        """``batch_size`` samples of ``seq_len`` tokens (deterministic from ``seed``)."""
        if seq_len < self.min_length():
            raise DataError(f"passkey in text: seq_len={seq_len} is shorter than the minimum {self.min_length()}", 2)
        g = as_generator(seed)
        rows, positions, depths = [], [], []
        a, b, c = self.needle_parts
        for _ in range(batch_size):
            key = self.key(g)
            needle = np.concatenate([a, key, b, key, c])
            n_fill = seq_len - len(self.intro) - len(needle) - len(self.question) - len(key)
            filler = self._filler(n_fill, g)
            cut, d = depth_to_start(depth, 0, n_fill - self.min_gap, g)
            row = np.concatenate([self.intro, filler[:cut], needle, filler[cut:], self.question, key])
            rows.append(row)
            positions.append(list(range(seq_len - len(key) - 1, seq_len - 1)))
            depths.append(d)
        return TaskBatch.from_rows(torch.from_numpy(np.stack(rows).astype(np.int64)), positions, depths)

    def describe(self, batch: TaskBatch, i: int = 0, width: int = 12) -> str:
        return self.tok.decode(batch.input_ids[i, -width:].tolist())
