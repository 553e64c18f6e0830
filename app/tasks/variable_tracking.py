"""Variable tracking (RULER's VT): follow a chain of assignments through a long context.

Each chain is ``ASSIGN val x1``, ``ASSIGN x1 x2``, ..., ``ASSIGN x(H-1) xH`` (``H = num_hops``;
``ASSIGN a b`` reads "b = a", source first), its statements scattered in filler in order;
``num_chains - 1`` distractor chains start from other values. The question ``QUERY val x1 .. xH``
asks for every variable that holds ``val``, in order: the predictions at ``val, x1 .. x(H-1)`` must
be ``x1 .. xH``. The queried chain's first statement sits at the given depth.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import ASSIGN, QUERY, Task, depth_to_start, place_blocks


class VariableTrackingTask(Task):
    """Multi-hop variable tracking with distractor chains."""

    name: ClassVar[str] = "variable_tracking"
    description: ClassVar[str] = "variable tracking: chains of assignments, list the variables holding a value"
    defaults: ClassVar[dict[str, Any]] = {"num_chains": 2, "num_hops": 3, "filler": "random"}

    def validate(self) -> None:
        self.num_chains = int(self.options["num_chains"])
        self.num_hops = int(self.options["num_hops"])
        if self.num_chains < 1 or self.num_hops < 1:
            raise ValueError("variable_tracking: num_chains and num_hops must be >= 1")
        if self.num_chains * self.num_hops > self.num_symbols // 2:
            raise ValueError("variable_tracking: num_chains * num_hops variables need num_symbols >= "
                             f"{2 * self.num_chains * self.num_hops}")

    @property
    def num_answers(self) -> int:
        return self.num_hops

    def min_length(self) -> int:
        return 1 + 3 * self.num_chains * self.num_hops + self.min_gap + 2 + self.num_hops

    def _fill(self, row: Tensor, g: torch.Generator, depth: float | None) -> tuple[list[int], float]:
        T, C, H = row.numel(), self.num_chains, self.num_hops
        names = self.symbols(g, C * H, part=(0, 2), distinct=True).view(C, H)
        values = self.symbols(g, C, part=(1, 2), distinct=True)
        q = T - (2 + H)
        end = q - self.min_gap
        # Root of the queried chain at the depth, leaving room for its H-1 later statements.
        start, d = depth_to_start(depth, 1, end - 3 * H, g)
        after = {i: start for i in range(1, H)}
        starts = place_blocks([3] * (C * H), 1, end, g, fixed={0: start}, after=after)
        for c in range(C):
            chain = sorted(starts[c * H:(c + 1) * H])  # statements of a chain appear in order
            for h, s in enumerate(chain):
                row[s] = ASSIGN
                row[s + 1] = values[c] if h == 0 else names[c, h - 1]
                row[s + 2] = names[c, h]
        row[q] = QUERY
        row[q + 1] = values[0]
        row[q + 2:] = names[0]
        return list(range(q + 1, q + 1 + H)), d
