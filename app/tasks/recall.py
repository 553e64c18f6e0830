"""Multi-query associative recall (MQAR, Zoology) stretched over a long context.

Layout (``N = num_pairs``, ``Q = num_queries``)::

    BOS filler ... KEY a1 b1 a2 b2 .. aN bN filler ... QUERY a_i b_i a_j b_j ... (Q pairs)

Keys ``a`` are distinct symbols from the first half of the symbol range, values ``b`` from the
second half. The prediction at each queried key must be its value.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import KEY, QUERY, Task, depth_to_start


class AssociativeRecallTask(Task):
    """Multi-query associative recall: a block of key-value pairs at some depth, queried at the end."""

    name: ClassVar[str] = "mqar"
    description: ClassVar[str] = ("multi-query associative recall: key-value pairs at a depth, "
                                  "several keys asked at the end")
    defaults: ClassVar[dict[str, Any]] = {"num_pairs": 8, "num_queries": 4, "filler": "random"}

    def validate(self) -> None:
        self.num_pairs = int(self.options["num_pairs"])
        self.num_queries = int(self.options["num_queries"])
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError("mqar: need 1 <= num_queries <= num_pairs")
        if self.num_pairs > self.num_symbols // 2:
            raise ValueError(f"mqar: num_pairs={self.num_pairs} needs num_symbols >= {2 * self.num_pairs}")

    @property
    def num_answers(self) -> int:
        return self.num_queries

    def min_length(self) -> int:
        return 1 + (1 + 2 * self.num_pairs) + self.min_gap + (1 + 2 * self.num_queries)

    def _fill(self, row: Tensor, g: torch.Generator, depth: float | None) -> tuple[list[int], float]:
        T, N, Q = row.numel(), self.num_pairs, self.num_queries
        keys = self.symbols(g, N, part=(0, 2), distinct=True)
        values = self.symbols(g, N, part=(1, 2))
        tail = T - (1 + 2 * Q)
        start, d = depth_to_start(depth, 1, tail - self.min_gap - (1 + 2 * N), g)
        row[start] = KEY
        row[start + 1: start + 1 + 2 * N: 2] = keys
        row[start + 2: start + 2 + 2 * N: 2] = values
        asked = torch.randperm(N, generator=g)[:Q]
        row[tail] = QUERY
        row[tail + 1::2] = keys[asked]
        row[tail + 2::2] = values[asked]
        return [tail + 1 + 2 * i for i in range(Q)], d
