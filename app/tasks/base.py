"""What every synthetic task shares: the token space, the batch format, placement and scoring.

Tasks live in token space (no tokenizer, no downloads). Ids ``0 .. NUM_SPECIAL-1`` are reserved
markers (the token-space stand-ins for phrases such as "The passkey is"), then come ``num_symbols``
*symbol* ids (passkey digits, keys, values, variable names), and every id above that is *filler*.
Symbols and filler never overlap, so a marker followed by symbols is the only thing a model can
learn to retrieve.

A task turns ``(batch_size, seq_len, seed, depth)`` into a :class:`TaskBatch`; the same arguments
always give the same batch, on any machine (every draw comes from one CPU ``torch.Generator``).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

IGNORE_INDEX = -100

# Reserved marker ids (the rest of the vocabulary is symbols, then filler).
PAD, BOS, KEY, QUERY, NEEDLE, ASSIGN, SEP, ANSWER = range(8)
NUM_SPECIAL = 8
MARKER_NAMES = {PAD: "PAD", BOS: "BOS", KEY: "KEY", QUERY: "QUERY", NEEDLE: "NEEDLE", ASSIGN: "ASSIGN",
                SEP: "SEP", ANSWER: "ANSWER"}

FILLERS = ("random", "repeat", "copy")


@dataclass
class TaskBatch:
    """One batch of a synthetic task, ready for next-token training and exact-match scoring.

    Attributes:
        input_ids: ``(B, T)`` int64 tokens.
        targets: ``(B, T)`` int64 next-token targets: ``targets[:, t] == input_ids[:, t+1]``, and
            ``IGNORE_INDEX`` at the last position.
        answer_mask: ``(B, T)`` bool, True at the positions whose prediction is the answer (a subset
            of the positions with a target). Training puts its loss there (or on every target).
        answer_positions: ``(B, A)`` int64, the True positions of ``answer_mask`` in order (every
            sample of a batch has the same number ``A`` of answer tokens).
        depth: ``(B,)`` float, the relative position of the queried item (0 = start, 1 = as late as
            the task allows), for depth x length reports.
    """

    input_ids: Tensor
    targets: Tensor
    answer_mask: Tensor
    answer_positions: Tensor
    depth: Tensor

    @classmethod
    def from_rows(cls, input_ids: Tensor, answer_positions: list[list[int]], depths: list[float]) -> TaskBatch:
        """Next-token targets (``-100`` after the last token) and the answer mask from ``(B, T)`` ids, the
        answer positions of each row and each row's depth."""
        targets = torch.full_like(input_ids, IGNORE_INDEX)
        targets[:, :-1] = input_ids[:, 1:]
        positions = torch.tensor(answer_positions, dtype=torch.long)
        answer_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        answer_mask.scatter_(1, positions, True)
        return cls(input_ids, targets, answer_mask, positions, torch.tensor(depths))

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def answers(self) -> Tensor:
        """``(B, A)`` the expected answer tokens."""
        return self.targets.gather(1, self.answer_positions)

    def loss_mask(self, on: str = "answer") -> Tensor:
        """``(B, T)`` bool: where the loss goes, ``on`` = ``"answer"`` or ``"all"`` (every target)."""
        if on == "answer":
            return self.answer_mask
        if on == "all":
            return self.targets != IGNORE_INDEX
        raise ValueError(f"loss must be on 'answer' or 'all', got {on!r}")

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TaskBatch:
        return TaskBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    def pin_memory(self) -> TaskBatch:
        """The batch in page-locked host memory: its copy to a GPU (``to(..., non_blocking=True)``) then
        neither waits for the GPU's queued work nor blocks the host."""
        return TaskBatch(*(getattr(self, f.name).pin_memory() for f in fields(self)))

    def select(self, index: slice | Tensor) -> TaskBatch:
        """The samples ``index`` of the batch (a data-parallel rank takes its slice this way)."""
        return TaskBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat_time(parts: list[TaskBatch]) -> TaskBatch:
        """Concatenate batches along time (unrelated segments in one sequence, spec section 7).

        Answer positions are shifted into the joined sequence; the last position of every part but
        the last gets the next part's first token as its target (a plain language-model target,
        never an answer).
        """
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + p.seq_len)
        input_ids = torch.cat([p.input_ids for p in parts], 1)
        targets = torch.full_like(input_ids, IGNORE_INDEX)
        targets[:, :-1] = input_ids[:, 1:]
        answer_mask = torch.cat([p.answer_mask for p in parts], 1)
        positions = torch.cat([p.answer_positions + o for p, o in zip(parts, offsets)], 1)
        # Depth of the last part: the one whose question ends the sequence.
        return TaskBatch(input_ids, targets, answer_mask, positions, parts[-1].depth)


def as_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator from a seed (or the generator itself)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def randint(g: torch.Generator, low: int, high: int) -> int:
    """One integer uniform in ``[low, high)`` from ``g``."""
    return int(torch.randint(low, high, (1,), generator=g))


def uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


class Task(ABC):
    """Base class of synthetic tasks. Subclasses set :attr:`name`, :attr:`defaults` and implement
    :meth:`_fill` (write one sample into a filler row).

    Common options (every task):
        vocab_size: model vocabulary (set by ``hsa train``/``hsa eval`` from the model).
        num_symbols: how many ids (after the markers) are symbols: passkey digits, keys, values.
        filler: ``"random"`` (i.i.d. filler ids), ``"repeat"`` (one fixed phrase of
            ``filler_period`` ids repeated, like the paper's "The grass is green..." text) or
            ``"copy"`` (a fresh random phrase per sample, repeated: with the loss on every token,
            predicting the filler means copying from ``filler_period`` tokens back, a dense
            in-context retrieval signal for training; the phrase cannot be memorised in weights).
        filler_period: phrase length for ``"repeat"`` and ``"copy"``.
        min_gap: tokens of filler at least between the queried item and the question (the passkey
            protocol asks for two chunks: ``hsa train`` sets it to ``2 * chunk_size`` of the model
            when left at ``None``).
        seed: fixes the task's own constants (the filler phrase); samples come from ``sample``'s seed.
    """

    name: ClassVar[str] = "task"
    description: ClassVar[str] = ""
    common_defaults: ClassVar[dict[str, Any]] = {
        "vocab_size": 512, "num_symbols": 64, "filler": "repeat", "filler_period": 31, "min_gap": None,
        "seed": 0,
    }
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        allowed = self.all_defaults()
        for key in options:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=2)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"task '{self.name}': unknown option {key!r}{hint} "
                                 f"(allowed: {', '.join(sorted(allowed))})")
        self.options: dict[str, Any] = {**allowed, **options}
        o = self.options
        self.vocab_size = int(o["vocab_size"])
        self.num_symbols = int(o["num_symbols"])
        self.filler = str(o["filler"])
        if self.filler not in FILLERS:
            raise ValueError(f"task '{self.name}': filler must be one of {FILLERS}, got {self.filler!r}")
        self.filler_low = NUM_SPECIAL + self.num_symbols
        if self.vocab_size - self.filler_low < 2:
            raise ValueError(f"task '{self.name}': vocab_size={self.vocab_size} leaves no room for filler after "
                             f"{NUM_SPECIAL} markers and num_symbols={self.num_symbols}")
        self.min_gap = int(o["min_gap"]) if o["min_gap"] is not None else 0
        g = as_generator(int(o["seed"]) + 7919)
        self.phrase = torch.randint(self.filler_low, self.vocab_size, (int(o["filler_period"]),), generator=g)
        self.validate()

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        return {**cls.common_defaults, **cls.defaults}

    # -- for subclasses -----------------------------------------------------------------------------
    def validate(self) -> None:  # noqa: B027 - optional hook: tasks without own options need no check
        """Check the task-specific options (raise ``ValueError``)."""

    @property
    @abstractmethod
    def num_answers(self) -> int:
        """Answer tokens per sample (``A``)."""

    @abstractmethod
    def min_length(self) -> int:
        """The shortest ``seq_len`` this task can fill."""

    @abstractmethod
    def _fill(self, row: Tensor, g: torch.Generator, depth: float | None) -> tuple[list[int], float]:
        """Write one sample into ``row`` ``(T,)`` (already filler, ``row[0] == BOS``).

        Returns the answer positions (the positions *predicting* answer tokens) and the depth used.
        """

    # -- shared machinery ---------------------------------------------------------------------------
    def symbols(self, g: torch.Generator, n: int, *, part: tuple[int, int] = (0, 1), distinct: bool = False) -> Tensor:
        """``n`` symbol ids from part ``part[0]`` of ``part[1]`` equal slices of the symbol range."""
        i, parts = part
        size = self.num_symbols // parts
        low = NUM_SPECIAL + i * size
        if distinct:
            if n > size:
                raise ValueError(f"task '{self.name}': needs {n} distinct symbols but only {size} exist "
                                 f"(raise num_symbols)")
            return low + torch.randperm(size, generator=g)[:n]
        return torch.randint(low, low + size, (n,), generator=g)

    def filler_row(self, seq_len: int, g: torch.Generator) -> Tensor:
        if self.filler == "random":
            return torch.randint(self.filler_low, self.vocab_size, (seq_len,), generator=g)
        if self.filler == "copy":
            period = self.phrase.numel()
            phrase = torch.randint(self.filler_low, self.vocab_size, (period,), generator=g)
            return phrase.repeat(seq_len // period + 1)[:seq_len].clone()
        period = self.phrase.numel()
        phase = randint(g, 0, period)
        reps = (seq_len + phase) // period + 1
        return self.phrase.repeat(reps)[phase: phase + seq_len].clone()

    def sample(self, batch_size: int, seq_len: int, seed: int | torch.Generator = 0,
               depth: float | None = None) -> TaskBatch:
        """A deterministic batch.

        Args:
            batch_size: ``B``.
            seq_len: ``T`` tokens per sample, question and answer included.
            seed: an int or a CPU ``torch.Generator`` (advanced in place).
            depth: relative position of the queried item in ``[0, 1]``; ``None`` = uniform per sample.

        Returns:
            :class:`TaskBatch` with ``input_ids`` ``(B, T)``.
        """
        if seq_len < self.min_length():
            raise ValueError(f"task '{self.name}': seq_len={seq_len} is shorter than the minimum "
                             f"{self.min_length()} for these options")
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        g = as_generator(seed)
        rows, positions, depths = [], [], []
        for _ in range(batch_size):
            row = self.filler_row(seq_len, g)
            row[0] = BOS
            pos, d = self._fill(row, g, depth)
            rows.append(row)
            positions.append(pos)
            depths.append(d)
        return TaskBatch.from_rows(torch.stack(rows), positions, depths)

    def describe(self, batch: TaskBatch, i: int = 0, width: int = 12) -> str:
        """A short human-readable rendering of sample ``i`` around its markers (debugging, docs)."""
        ids = batch.input_ids[i].tolist()
        out = []
        for t, tok in enumerate(ids):
            if tok < NUM_SPECIAL:
                out.append(f"[{t}:{MARKER_NAMES[tok]}]")
            elif tok < self.filler_low:
                out.append(f"s{tok - NUM_SPECIAL}")
            elif out and out[-1] != "...":
                out.append("...")
        return " ".join(out)


def place_blocks(lengths: list[int], low: int, high: int, g: torch.Generator,
                 fixed: dict[int, int] | None = None, after: dict[int, int] | None = None) -> list[int]:
    """Random non-overlapping start positions for blocks of ``lengths`` inside ``[low, high)``.

    Args:
        fixed: block index -> its start (placed first, as given).
        after: block index -> a position its start must exceed (a chain statement after its root).

    Deterministic from ``g`` (rejection sampling; the region is normally far larger than the blocks,
    and the first free slot is taken when sampling keeps failing).
    """
    fixed, after = fixed or {}, after or {}
    taken: list[tuple[int, int]] = []
    starts: dict[int, int] = {}

    def free(s: int, n: int) -> bool:
        return s >= low and s + n <= high and all(s + n <= a or s >= b for a, b in taken)

    for i, s in fixed.items():
        if not free(s, lengths[i]):
            raise ValueError(f"block {i} at {s} does not fit in [{low}, {high})")
        starts[i] = s
        taken.append((s, s + lengths[i]))
    for i, n in enumerate(lengths):
        if i in starts:
            continue
        lo = max(low, after.get(i, low - 1) + 1)
        if lo + n > high:
            raise ValueError(f"no room for block {i} (length {n}) in [{lo}, {high})")
        for _ in range(64):
            s = randint(g, lo, high - n + 1)
            if free(s, n):
                break
        else:  # crowded: first free slot from a random start, wrapping
            s0 = randint(g, lo, high - n + 1)
            cands = [s for s in list(range(s0, high - n + 1)) + list(range(lo, s0)) if free(s, n)]
            if not cands:
                raise ValueError(f"sequence too short to place {len(lengths)} blocks in [{low}, {high})")
            s = cands[0]
        starts[i] = s
        taken.append((s, s + n))
    return [starts[i] for i in range(len(lengths))]


def depth_to_start(depth: float | None, low: int, high: int, g: torch.Generator) -> tuple[int, float]:
    """A start position in ``[low, high]`` at relative ``depth`` (uniform when ``None``)."""
    if high < low:
        raise ValueError("no room for the queried item")
    if depth is None:
        s = randint(g, low, high + 1)
    else:
        s = low + round(depth * (high - low))
    d = (s - low) / (high - low) if high > low else 0.0
    return s, d
