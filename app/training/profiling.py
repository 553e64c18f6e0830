"""``hsa train --profile-steps A:B``: ``torch.profiler`` around optimizer steps ``A+1 .. B`` of a run.

Where a step's time goes, per rank: a Chrome trace (``profile/rank{r}_trace.json``, open it in
Perfetto or ``chrome://tracing``) and a table of the operators by host time and by device time
(``profile/rank{r}_ops.txt``). The table's first line compares the device's kernel time with the
window's wall time. When kernels fill well under the wall time, the GPU waits on the host (launches,
synchronisations, data), which is what more GPUs cannot fix. Profiling is not part of the training
configuration: it changes nothing that a checkpoint records and may be given on ``--resume``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runtime.checkpoint import write_text_atomic


@dataclass(frozen=True)
class ProfileWindow:
    """Optimizer steps ``after + 1 .. last`` (1-based, as the logs count them) are profiled."""

    after: int
    last: int

    @classmethod
    def parse(cls, spec: str) -> ProfileWindow:
        """``"A:B"`` with ``0 <= A < B``: profile steps ``A+1 .. B``.

        Raises:
            ValueError: anything else (the message says what is allowed).
        """
        parts = spec.split(":")
        try:
            after, last = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"--profile-steps must be A:B (profile steps A+1..B), got {spec!r}") from None
        if not 0 <= after < last:
            raise ValueError(f"--profile-steps A:B needs 0 <= A < B, got {spec!r}")
        return cls(after, last)


class StepProfiler:
    """Starts ``torch.profiler`` before step ``window.after + 1`` and writes its files after step
    ``window.last`` (or at :meth:`close`, when the run ends inside the window)."""

    def __init__(self, window: ProfileWindow, out_dir: Path, rank: int, device: torch.device) -> None:
        self.window, self.out_dir, self.rank, self.device = window, out_dir, rank, device
        self._prof: Any = None
        self._t0 = 0.0
        self._steps = 0

    def before_step(self, done: int) -> None:
        """Called with the number of steps done before the next one."""
        if done == self.window.after and self._prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize(self.device)  # the window starts with an idle device
            self._prof = torch.profiler.profile(activities=activities, record_shapes=False, with_stack=False)
            self._prof.__enter__()
            self._t0 = time.perf_counter()

    def after_step(self, done: int) -> Path | None:
        """Called after each step (its figures read back); returns the table's path once written."""
        if self._prof is None:
            return None
        self._steps += 1
        return self.close() if done >= self.window.last else None

    def close(self) -> Path | None:
        """Stops the profiler and writes the trace and the table; ``None`` if it never started."""
        if self._prof is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall_ms = (time.perf_counter() - self._t0) * 1e3
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / f"rank{self.rank}_trace.json"))
        events = prof.key_averages()
        # Device time of the operators that own kernels (self time: nested operators are not counted twice).
        device_ms = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / 1e3
        head = (f"rank {self.rank}: {self._steps} step(s) in {wall_ms:,.1f} ms of wall time; device kernels "
                f"{device_ms:,.1f} ms ({100 * device_ms / max(wall_ms, 1e-9):.0f}% of the wall time; over 100% "
                f"when streams overlap)\n")
        tables = [head]
        if self.device.type == "cuda":
            tables.append("\nBy device time:\n" + events.table(sort_by="self_device_time_total", row_limit=40))
        tables.append("\nBy host time:\n" + events.table(sort_by="self_cpu_time_total", row_limit=40))
        path = self.out_dir / f"rank{self.rank}_ops.txt"
        write_text_atomic(path, "".join(tables))
        return path


__all__ = ["ProfileWindow", "StepProfiler"]
