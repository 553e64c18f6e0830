"""The paper's passkey protocol, in token space.

Layout of one sample of ``T`` tokens (``L = key_len``)::

    BOS filler ... KEY k1 .. kL filler ... (>= min_gap tokens) ... QUERY KEY k1 .. kL
                   ^ start at relative depth                             ^ T-L-1

``KEY`` stands for "The passkey is", ``QUERY`` for "What is the passkey?". As in the paper's prompt,
the question ends by repeating the marker ("... The passkey is"), so the answer continues the marker
the way it was continued before. The answer is teacher-forced: the predictions at ``KEY, k1 ..
k(L-1)`` must be ``k1 .. kL``; a sample counts as retrieved only when every passkey token is the
argmax (exact match).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import KEY, QUERY, Task, depth_to_start


class PasskeyTask(Task):
    """Passkey retrieval: ``key_len`` random symbol ids behind ``KEY``, asked for at the end."""

    name: ClassVar[str] = "passkey"
    description: ClassVar[str] = ("passkey retrieval (the paper's protocol): random key behind a marker, "
                                  "asked at the end")
    defaults: ClassVar[dict[str, Any]] = {"key_len": 4}

    def validate(self) -> None:
        self.key_len = int(self.options["key_len"])
        if self.key_len < 1:
            raise ValueError("passkey: key_len must be >= 1")

    @property
    def num_answers(self) -> int:
        return self.key_len

    def min_length(self) -> int:
        return 1 + 2 * (self.key_len + 1) + 1 + self.min_gap

    def _fill(self, row: Tensor, g: torch.Generator, depth: float | None) -> tuple[list[int], float]:
        T, L = row.numel(), self.key_len
        key = self.symbols(g, L)
        q = T - L - 2  # position of QUERY; the repeated marker follows it
        start, d = depth_to_start(depth, 1, q - self.min_gap - (L + 1), g)
        row[start] = KEY
        row[start + 1: start + 1 + L] = key
        row[q] = QUERY
        row[q + 1] = KEY
        row[q + 2:] = key
        return list(range(q + 1, q + 1 + L)), d
