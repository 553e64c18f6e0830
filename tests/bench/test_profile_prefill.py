"""bench/offload/profile_prefill.py's per-module peak memory (its CUDA run is a device-only bench; the
bookkeeping is checked here with a counting allocator)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("profile_prefill", ROOT / "bench" / "offload" / "profile_prefill.py")
assert _spec is not None and _spec.loader is not None
profile_prefill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_prefill)


class Counter:
    """A fake allocator: bytes allocated now, and the peak since the last reset."""

    def __init__(self, base: int) -> None:
        self.now = self.top = base

    def alloc(self, n: int) -> None:
        self.now += n
        self.top = max(self.top, self.now)

    def free(self, n: int) -> None:
        self.now -= n

    def reset(self) -> None:
        self.top = self.now


class Temporary(nn.Module):
    """Allocates ``size`` bytes for the length of its forward, keeping ``keep`` of them."""

    def __init__(self, counter: Counter, size: int, keep: int = 0) -> None:
        super().__init__()
        self.counter, self.size, self.keep = counter, size, keep

    def forward(self, x: int) -> int:
        self.counter.alloc(self.size)
        self.counter.free(self.size - self.keep)
        return x


class Block(nn.Module):
    def __init__(self, counter: Counter, before: int, a: int, b: int, keep_a: int) -> None:
        super().__init__()
        self.counter, self.before = counter, before
        self.a, self.b = Temporary(counter, a, keep=keep_a), Temporary(counter, b)

    def forward(self, x: int) -> int:
        self.counter.alloc(self.before)  # the block's own temporary, alive over both children
        x = self.b(self.a(x))
        self.counter.free(self.before)
        return x


def test_module_peaks_nest_and_fold_into_the_parent() -> None:
    c = Counter(base=1000)
    model = nn.Sequential(Block(c, before=50, a=300, b=200, keep_a=10), Temporary(c, 100))
    peaks = profile_prefill.ModulePeaks(model, depth=2, allocated=lambda: c.now, peak=lambda: c.top, reset=c.reset)
    model(0)
    got = peaks.take()
    # block a: base + the block's 50 + its own 300; b runs after a kept 10: 1000 + 50 + 10 + 200
    assert got == {"0.a": 1350, "0.b": 1260, "0": 1350, "1": 1110}
    c.alloc(5000)  # outside any hooked module: not attributed
    model(0)
    assert peaks.take()["0"] == 6000 + 50 + 10 + 300  # the kept 10 of the first call are still allocated
    peaks.close()
    model(0)
    assert peaks.take() == {}


def test_peak_table_sorts_by_the_last_segment() -> None:
    table = profile_prefill.peak_table({"a": 2**20, "b": 3 * 2**20}, {"a": 5 * 2**20, "b": 3 * 2**20, "c": 2**20})
    rows = table.splitlines()[2:]
    assert rows == ["| a | 1.0 | 5.0 | +4.0 |", "| b | 3.0 | 3.0 | +0.0 |", "| c | 0.0 | 1.0 | +1.0 |"]


class Clock:
    """A fake device clock: modules advance it; marks read it."""

    def __init__(self) -> None:
        self.now = 0.0


class Busy(nn.Module):
    """Takes ``seconds`` of the clock, around its children's time."""

    def __init__(self, clock: Clock, seconds: float, *children: nn.Module) -> None:
        super().__init__()
        self.clock, self.seconds, self.inner = clock, seconds, nn.Sequential(*children)

    def forward(self, x: int) -> int:
        self.clock.now += self.seconds
        return self.inner(x) if len(self.inner) else x


def test_module_times_sum_every_call_and_include_the_children() -> None:
    clock = Clock()
    collected = []
    model = nn.Sequential(Busy(clock, 1.0, Busy(clock, 2.0), Busy(clock, 0.5)), Busy(clock, 4.0))
    times = profile_prefill.ModuleTimes(model, depth=3, mark=lambda: clock.now, elapsed=lambda a, b: b - a,
                                        sync=lambda: collected.append(True))
    model(0)
    model(0)
    clock.now += 10.0  # outside any hooked module: not attributed
    totals = times.collect()
    assert collected == [True]  # waits for the device once per collect
    assert totals == {"0": 7.0, "0.inner.0": 4.0, "0.inner.1": 1.0, "0.inner": 5.0, "1": 8.0}
    assert times.calls == {"0": 2, "0.inner.0": 2, "0.inner.1": 2, "0.inner": 2, "1": 2}
    model(0)
    assert times.collect()["1"] == 12.0  # totals keep growing
    times.close()
    model(0)
    assert times.collect()["1"] == 12.0  # hooks removed


def test_time_table_sorts_by_time_and_shows_the_share() -> None:
    table = profile_prefill.time_table({"a": 1.0, "b": 3.0}, {"a": 2, "b": 4}, wall=4.0)
    assert table.splitlines()[2:] == ["| b | 3.00 | 75.0% | 4 |", "| a | 1.00 | 25.0% | 2 |"]


def test_modules_goes_with_the_time_profile_only() -> None:
    import subprocess
    import sys

    script = ROOT / "bench" / "offload" / "profile_prefill.py"
    done = subprocess.run([sys.executable, str(script), "run", "4k", "--modules", "--memory"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert "--modules goes with the time profile" in done.stderr


def test_spread_shows_the_median_and_what_the_slow_segments_cost() -> None:
    times = [0.04] * 9 + [0.04, 10.0]  # one slow first segment, as a process's first one is
    line = profile_prefill.spread([times[-1], *times[:-1]], worst=2)
    assert line.startswith("segment times: median 40.0 ms, 90th percentile 40.0 ms, above the median 10.0 s")
    assert line.endswith("slowest: 0: 10000, 1: 40")
    assert profile_prefill.spread([]) == "no segments timed"


def test_a_bad_select_launch_is_refused() -> None:
    import subprocess
    import sys

    script = ROOT / "bench" / "offload" / "profile_prefill.py"
    done = subprocess.run([sys.executable, str(script), "run", "4k", "--select-launch", '{"warps": 0}'],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert "--select-launch" in done.stderr and "SelectLaunch.warps must be an int >= 1, got 0" in done.stderr
