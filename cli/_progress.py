"""Progress of long prefills for ``hsa eval``: a prefill of 16M or 64M tokens runs for minutes per sample.

In a terminal, a transient rich progress bar per forward (tokens done, tokens/s); elsewhere (a log
file, a batch job) one line every ``interval`` seconds, so that a job cut by a time limit still shows
how far it got. Prefills shorter than ``min_tokens`` show nothing: they end within seconds.
"""

from __future__ import annotations

import time
from types import TracebackType

from hsa_app.evaluation import format_length
from hsa_app.evaluation.core import PrefillProgress
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def _tokens(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n:,}"


class PrefillDisplay:
    """``on_prefill`` for :func:`hsa_app.evaluation.run_eval`; use as a context manager (``with``)."""

    def __init__(self, console: Console, *, min_tokens: int = 1 << 20, interval: float = 60.0) -> None:
        self.console, self.min_tokens, self.interval = console, min_tokens, interval
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._key: tuple[int, float | None, int] | None = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> PrefillDisplay:
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

    def __call__(self, p: PrefillProgress) -> None:
        if p.total < self.min_tokens:
            return
        now = time.perf_counter()
        key = (p.length, p.depth, p.first)
        depth = "random" if p.depth is None else f"{p.depth:.2f}"
        label = (f"prefill {format_length(p.length)} depth {depth}, samples {p.first + 1}-{p.first + p.batch} "
                 f"of {p.samples}")
        if key != self._key:  # a new forward
            self._key, self._started, self._last_line = key, now, now
            if self._progress is not None:
                if self._task is not None:
                    self._progress.remove_task(self._task)
                self._task = self._progress.add_task(label, total=p.total, info="")
        rate = p.tokens * p.batch / max(now - self._started, 1e-9)
        info = f"{_tokens(p.tokens)} of {_tokens(p.total)} tokens, {rate / 1e3:,.0f}K tokens/s"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=p.tokens, info=info)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self.console.print(f"  {label}: {info}", soft_wrap=True)
