"""Progress of long prefills for ``hsa eval`` and ``hsa generate``: a prefill of 16M or 64M tokens runs
for minutes.

In a terminal, a transient rich progress bar per forward (tokens done, tokens/s); elsewhere (a log
file, a batch job) one line every ``interval`` seconds, so that a job cut by a time limit still shows
how far it got. Prefills shorter than ``min_tokens`` show nothing: they end within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from types import TracebackType

from hsa_app.evaluation import format_length
from hsa_app.evaluation.core import PrefillProgress
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hsa_core.units import format_bytes


def _tokens(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n:,}"


class _TokenProgress:
    """One bar (terminal) or a line an interval (logs) per forward, keyed by what identifies it."""

    def __init__(self, console: Console, *, min_tokens: int = 1 << 20, interval: float = 60.0) -> None:
        self.console, self.min_tokens, self.interval = console, min_tokens, interval
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._key: Hashable = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> _TokenProgress:
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _show(self, key: Hashable, label: str, tokens: int, total: int, rows: int,
              gpu_peak_bytes: int | None = None) -> None:
        """``tokens`` of ``total`` done in each of ``rows`` sequences of the forward ``key``; the GPU
        memory peak so far when known."""
        if total < self.min_tokens:
            return
        now = time.perf_counter()
        if key != self._key:  # a new forward
            self._key, self._started, self._last_line = key, now, now
            if self._progress is not None:
                if self._task is not None:
                    self._progress.remove_task(self._task)
                self._task = self._progress.add_task(label, total=total, info="")
        rate = tokens * rows / max(now - self._started, 1e-9)
        info = f"{_tokens(tokens)} of {_tokens(total)} tokens, {rate / 1e3:,.0f}K tokens/s"
        if gpu_peak_bytes is not None:
            info += f", GPU peak {format_bytes(gpu_peak_bytes)}"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=tokens, info=info)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self.console.print(f"  {label}: {info}", soft_wrap=True)


class PrefillDisplay(_TokenProgress):
    """``on_prefill`` for :func:`hsa_app.evaluation.run_eval`; use as a context manager (``with``)."""

    def __call__(self, p: PrefillProgress) -> None:
        depth = "random" if p.depth is None else f"{p.depth:.2f}"
        label = (f"prefill {format_length(p.length)} depth {depth}, samples {p.first + 1}-{p.first + p.batch} "
                 f"of {p.samples}")
        self._show((p.length, p.depth, p.first), label, p.tokens, p.total, p.batch, p.gpu_peak_bytes)


class PromptDisplay(_TokenProgress):
    """``on_segment`` of :func:`hsa_core.generation.stream_generate`: the prompt's prefill."""

    def __call__(self, tokens: int, total: int) -> None:
        self._show("prompt", "prefill of the prompt", tokens, total, 1)
