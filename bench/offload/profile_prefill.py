"""Where an offloaded long prefill spends its time, or its GPU memory (CUDA only).

Runs a batch-1 prefill of LENGTH tokens of periodic filler (a random pattern of ``--period`` tokens,
997 by default; the passkey task's filler repeats every 31) through the model in segments with its
chunk memory offloaded.

* Time (the default): prints the wall time of some segments along the way (how the per-segment cost
  grows with the context), then profiles the last two segments with ``torch.profiler`` and prints the
  top operators by GPU time and by CPU time.
* ``--memory``: the memory allocated when the first, second and last segments begin (what the cache
  carries), and the peak of allocated GPU memory inside each module's forward (modules up to
  ``--depth`` dots deep, e.g. ``layers.4.retrieval``) in the second segment (one segment of context
  carried in) and in the last one (the deepest context), side by side: what a deep context adds to the
  peak, and where. ``HSA_OFFLOAD_LANDMARKS=host`` keeps the landmarks in host memory as ``hsa eval`` does.
* ``--modules`` (with the time profile): the device time inside each module (up to ``--depth`` dots
  deep), summed over every timed segment, with its share of their wall time: how much of a whole
  prefill the selection (``selections.*``), the HSA layers and the backbone take, which the last two
  segments alone do not show.

    python3 bench/offload/profile_prefill.py runs/offload/ramba-sm/model 4194304
    python3 bench/offload/profile_prefill.py runs/offload/ramba-sm-shared/model 64m --segment 65536 --modules
    python3 bench/offload/profile_prefill.py runs/offload/ramba-sm-shared/model 16m --segment 65536 \\
        --period 31 --select-launch '{"long_warps": 8, "long_stages": 3}'
    HSA_OFFLOAD_LANDMARKS=host python3 bench/offload/profile_prefill.py runs/offload/ramba-sm/model 16m \\
        --segment 65536 --memory
"""

from __future__ import annotations

import argparse
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from hsa_app.evaluation.report import parse_lengths
from hsa_app.runtime.pinned import fast_pinned_memory
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hsa_core.io import load_model
from hsa_core.model import HSALanguageModel

#: tokens of the repeated filler pattern (``--period``; the passkey task's filler repeats every 31)
PERIOD = 997


class _ModuleHooks(ABC):
    """Forward pre-hooks and hooks (``_enter(name)``, ``_leave(name)``, which subclasses define) on every
    module of ``model`` whose name has fewer than ``depth`` dots; :meth:`close` removes them."""

    _handles: list[Any]

    def _hook(self, model: nn.Module, depth: int) -> None:
        self._handles = []
        for name, module in model.named_modules():
            if name and name.count(".") < depth:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave(name)))

    @abstractmethod
    def _enter(self, name: str) -> Callable[..., None]:
        """The forward pre-hook of module ``name``."""

    @abstractmethod
    def _leave(self, name: str) -> Callable[..., None]:
        """The forward hook of module ``name``."""

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class ModulePeaks(_ModuleHooks):
    """The peak allocated bytes inside each module's forward, through forward hooks.

    Each module's entry resets the allocator's peak counter; a module's peak is the highest of its
    own counter and its children's peaks, and it is folded into its parent's when it returns, so
    nested modules are measured as well as their parents. ``peaks`` keeps the highest value each module
    reached since the last :meth:`take`. The three memory functions default to the CUDA allocator's
    (tests pass counters).
    """

    def __init__(self, model: nn.Module, depth: int = 3, *,
                 allocated: Callable[[], int] = torch.cuda.memory_allocated,
                 peak: Callable[[], int] = torch.cuda.max_memory_allocated,
                 reset: Callable[[], None] = torch.cuda.reset_peak_memory_stats) -> None:
        self.peaks: dict[str, int] = {}
        self._allocated, self._peak, self._reset = allocated, peak, reset
        self._stack: list[list[Any]] = []  # [module name, highest peak seen inside it so far]
        self._hook(model, depth)

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object) -> None:
            if self._stack:  # the parent's peak so far, before the counter restarts
                self._stack[-1][1] = max(self._stack[-1][1], self._peak())
            self._reset()
            self._stack.append([name, self._allocated()])
        return hook

    def _leave(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, _out: object) -> None:
            _, highest = self._stack.pop()
            top = max(highest, self._peak())
            self.peaks[name] = max(self.peaks.get(name, 0), top)
            if self._stack:
                self._stack[-1][1] = max(self._stack[-1][1], top)
            self._reset()
        return hook

    def take(self) -> dict[str, int]:
        """The peaks since the last call (module name -> bytes), then start afresh."""
        peaks, self.peaks = self.peaks, {}
        return peaks



def _cuda_mark() -> Any:
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class ModuleTimes(_ModuleHooks):
    """The device time inside each module's forward, summed over every call, through forward hooks.

    Each hooked module (names up to ``depth`` dots deep) takes a mark on entry and one on return (by
    default CUDA events on the current stream, so the hooks do not wait for the GPU); :meth:`collect`,
    called once the work is done, adds each pair's elapsed seconds to the module's total. A module's
    time includes its children's, which are totalled too. ``mark``, ``elapsed`` and ``sync`` default to
    CUDA events (tests pass a clock).
    """

    def __init__(self, model: nn.Module, depth: int = 2, *, mark: Callable[[], Any] = _cuda_mark,
                 elapsed: Callable[[Any, Any], float] = lambda a, b: a.elapsed_time(b) / 1e3,
                 sync: Callable[[], None] = torch.cuda.synchronize) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._mark, self._elapsed, self._sync = mark, elapsed, sync
        self._open: list[tuple[str, Any]] = []  # entered, not yet returned: (name, mark)
        self._done: list[tuple[str, Any, Any]] = []  # returned, not yet collected
        self._hook(model, depth)

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object) -> None:
            self._open.append((name, self._mark()))
        return hook

    def _leave(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, _out: object) -> None:
            opened, start = self._open.pop()
            assert opened == name, f"{name} returned inside {opened}"
            self._done.append((name, start, self._mark()))
        return hook

    def collect(self) -> dict[str, float]:
        """Wait for the device, add the calls since the last collect to the totals; returns the totals
        (module name -> seconds)."""
        self._sync()
        for name, start, end in self._done:
            self.totals[name] = self.totals.get(name, 0.0) + self._elapsed(start, end)
            self.calls[name] = self.calls.get(name, 0) + 1
        self._done.clear()
        return self.totals


def time_table(totals: dict[str, float], calls: dict[str, int], wall: float) -> str:
    """Markdown rows, longest first: module, total seconds, share of ``wall`` seconds, calls."""
    rows = ["| module | seconds | share of the wall time | calls |", "|---|---|---|---|"]
    for name in sorted(totals, key=lambda n: -totals[n]):
        rows.append(f"| {name} | {totals[name]:,.2f} | {totals[name] / wall:.1%} | {calls.get(name, 0):,} |")
    return "\n".join(rows)


def peak_table(first: dict[str, int], last: dict[str, int], first_name: str = "first") -> str:
    """Markdown rows: module, peak MiB in the ``first_name`` and the last segment, and the difference."""
    rows = [f"| module | {first_name} segment MiB | last segment MiB | last - {first_name} MiB |", "|---|---|---|---|"]
    for name in sorted(set(first) | set(last), key=lambda n: -last.get(n, 0)):
        a, b = first.get(name, 0) / 2**20, last.get(name, 0) / 2**20
        rows.append(f"| {name} | {a:,.1f} | {b:,.1f} | {b - a:+,.1f} |")
    return "\n".join(rows)


def spread(times: list[float], worst: int = 12) -> str:
    """How uneven the segment times are: median, 90th percentile, the time above the median summed over
    every segment (what the slow ones cost), and the ``worst`` slowest segments as ``index: ms``."""
    if not times:
        return "no segments timed"
    ordered = sorted(times)
    median, p90 = ordered[len(ordered) // 2], ordered[int(0.9 * (len(ordered) - 1))]
    excess = sum(max(0.0, t - median) for t in times)
    slowest = sorted(range(len(times)), key=lambda i: -times[i])[:worst]
    return (f"segment times: median {median * 1e3:.1f} ms, 90th percentile {p90 * 1e3:.1f} ms, above the median "
            f"{excess:.1f} s in all; slowest: " + ", ".join(f"{i}: {times[i] * 1e3:.0f}" for i in sorted(slowest)))


def main(run: str, length: int, segment: int, memory: bool, depth: int, modules: bool = False,
         period: int = PERIOD) -> None:
    dev = torch.device("cuda")
    model = load_model(HSALanguageModel, run, device=dev).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (period,), generator=g).repeat(length // period + 1)[:length].view(1, length)
    cache = model.init_cache(1, offload=True, reserve_tokens=length)
    segments = length // segment
    timed = segments if memory else segments - 2
    times: list[float] = []
    peaks = ModulePeaks(model, depth) if memory else None
    clocks = ModuleTimes(model, depth) if modules and not memory else None
    # The second segment is the reference: the first starts from an empty cache, so against it every
    # module's peak also shows what the cache and this loop carry from one segment to the next.
    second: dict[str, int] = {}
    starts: list[int] = []  # bytes allocated when each segment begins
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for i in range(timed):
            torch.cuda.synchronize()
            starts.append(torch.cuda.memory_allocated())
            t0 = time.perf_counter()
            # [1]: the segment's hidden states, (1, segment, d_model) in fp32, are dropped at once; bound to
            # a name, they stayed alive through the next segment's forward (64 MiB at 64K tokens of the demo)
            cache = model.forward_hidden(ids[:, i * segment:(i + 1) * segment].to(dev), cache, return_cache=True)[1]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            if clocks is not None:
                clocks.collect()
            if peaks is not None:
                taken = peaks.take()
                if i <= 1:
                    second = taken
                last = taken
        for k in [1, 8, 32, 64, 128, 192, 512, len(times) - 1]:
            if k < len(times):
                print(f"segment {k} (context {k * segment:,}): {times[k] * 1e3:.1f} ms")
        print(f"total {sum(times):.1f} s for {len(times)} segments; without the first (compiling, autotuning, "
              f"the pinned allocation of the whole reserve): {sum(times[1:]):.1f} s")
        print(spread(times))
        if clocks is not None:
            clocks.close()
            print(f"\ndevice time inside each module over those {len(times)} segments (a module's time includes "
                  f"its children's):")
            print(time_table(clocks.totals, clocks.calls, sum(times)))
        if peaks is not None:
            peaks.close()
            print("\nallocated when a segment begins: "
                  + ", ".join(f"segment {k + 1}: {starts[k] / 2**20:,.1f} MiB" for k in sorted({0, 1, len(starts) - 1})
                              if k < len(starts)))
            print(f"\npeak allocated inside each module, second segment against the last (context {length:,}, "
                  f"segments of {segment:,}):")
            print(peak_table(second, last, "second"))
            return
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(segments - 2, segments):
                cache = model.forward_hidden(ids[:, i * segment:(i + 1) * segment].to(dev), cache,
                                             return_cache=True)[1]
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run or model directory")
    parser.add_argument("length", help="prefill tokens (4194304, 16m, ...)")
    parser.add_argument("--segment", default="16384", help="tokens per prefill segment (default 16384)")
    parser.add_argument("--memory", action="store_true", help="peak GPU memory per module instead of time")
    parser.add_argument("--depth", type=int, default=3, help="modules up to this many dots deep (--memory, --modules)")
    parser.add_argument("--period", type=int, default=PERIOD,
                        help=f"tokens of the repeated filler pattern (default {PERIOD}; passkey's filler: 31)")
    parser.add_argument("--modules", action="store_true",
                        help="with the time profile: device time per module over every timed segment")
    parser.add_argument("--select-launch", metavar="JSON",
                        help="SelectLaunch keyword arguments for every selection, e.g. '{\"warps\": 4}' "
                             "(as bench/offload/with_select_launch.py; default: the measured table)")
    a = parser.parse_args()
    if a.modules and a.memory:
        parser.error("--modules goes with the time profile, not --memory")
    if a.period < 1:
        parser.error(f"--period must be >= 1 tokens, got {a.period}")
    if a.select_launch is not None:
        from with_select_launch import use_select_launch  # this script's folder is on sys.path

        try:
            print(f"selection launch: {use_select_launch(a.select_launch)}", flush=True)
        except ValueError as e:
            parser.error(f"--select-launch {a.select_launch!r}: {e}")
    (length,), (segment,) = parse_lengths(a.length), parse_lengths(a.segment)
    fast_pinned_memory()  # as hsa eval: the offloaded K/V reserve is pinned in the first segment
    main(a.run, length, segment, a.memory, a.depth, a.modules, a.period)
