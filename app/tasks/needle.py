"""Needle-in-a-haystack retrieval (RULER's NIAH), single-key and multi-key.

Each needle is ``NEEDLE key v1 .. vV`` ("One of the special magic numbers for <key> is: <value>").
``num_needles`` needles with distinct keys are hidden in filler; the queried one starts at the given
depth, the others (distractors, multi-key) anywhere else. The sequence ends with ``QUERY key v1 ..
vV``; the predictions at ``key, v1 .. v(V-1)`` must be the value tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import NEEDLE, QUERY, Task, depth_to_start, place_blocks


class NeedleTask(Task):
    """Single- or multi-key needle retrieval with ``value_len``-token values."""

    name: ClassVar[str] = "niah"
    description: ClassVar[str] = "needle in a haystack: key-value needles in filler, one key asked at the end"
    defaults: ClassVar[dict[str, Any]] = {"num_needles": 1, "value_len": 4, "filler": "random"}

    def validate(self) -> None:
        self.num_needles = int(self.options["num_needles"])
        self.value_len = int(self.options["value_len"])
        if self.num_needles < 1 or self.value_len < 1:
            raise ValueError("niah: num_needles and value_len must be >= 1")
        if self.num_needles > self.num_symbols // 2:
            raise ValueError(f"niah: num_needles={self.num_needles} needs num_symbols >= {2 * self.num_needles}")

    @property
    def num_answers(self) -> int:
        return self.value_len

    def min_length(self) -> int:
        n = self.value_len + 2
        return 1 + self.num_needles * n + self.min_gap + n

    def _fill(self, row: Tensor, g: torch.Generator, depth: float | None) -> tuple[list[int], float]:
        T, V, N = row.numel(), self.value_len, self.num_needles
        n = V + 2
        keys = self.symbols(g, N, part=(0, 2), distinct=True)
        values = self.symbols(g, N * V, part=(1, 2)).view(N, V)
        q = T - n  # QUERY position
        end = q - self.min_gap  # every needle ends before the gap
        start, d = depth_to_start(depth, 1, end - n, g)
        starts = place_blocks([n] * N, 1, end, g, fixed={0: start})
        for i, s in enumerate(starts):
            row[s] = NEEDLE
            row[s + 1] = keys[i]
            row[s + 2: s + n] = values[i]
        row[q] = QUERY
        row[q + 1] = keys[0]
        row[q + 2:] = values[0]
        return list(range(q + 1, q + 1 + V)), d


class MultiKeyNeedleTask(NeedleTask):
    """:class:`NeedleTask` with distractor needles by default (RULER's multi-key NIAH)."""

    name: ClassVar[str] = "niah_multikey"
    description: ClassVar[str] = "multi-key needle in a haystack: distractor needles with other keys"
    defaults: ClassVar[dict[str, Any]] = {"num_needles": 4, "value_len": 4, "filler": "random"}
