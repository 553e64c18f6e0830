"""Where an offloaded long prefill spends its time, or its GPU memory (CUDA only).

Runs a batch-1 prefill of LENGTH tokens of periodic filler (a 997-token random pattern, like the
passkey task's repeated filler) through the model in segments with its chunk memory offloaded.

* Time (the default): prints the wall time of some segments along the way (how the per-segment cost
  grows with the context), then profiles the last two segments with ``torch.profiler`` and prints the
  top operators by GPU time and by CPU time.
* ``--memory``: the memory allocated when the first, second and last segments begin (what the cache
  carries), and the peak of allocated GPU memory inside each module's forward (modules up to
  ``--depth`` dots deep, e.g. ``layers.4.retrieval``) in the second segment (one segment of context
  carried in) and in the last one (the deepest context), side by side: what a deep context adds to the
  peak, and where. ``HSA_OFFLOAD_LANDMARKS=host`` keeps the landmarks in host memory as ``hsa eval`` does.

    python3 bench/offload/profile_prefill.py runs/offload/ramba-sm/model 4194304
    HSA_OFFLOAD_LANDMARKS=host python3 bench/offload/profile_prefill.py runs/offload/ramba-sm/model 16m \\
        --segment 65536 --memory
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from hsa_app.evaluation.report import parse_lengths
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hsa_core.io import load_model
from hsa_core.model import HSALanguageModel

PERIOD = 997


class ModulePeaks:
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
        self._handles = []
        for name, module in model.named_modules():
            if name and name.count(".") < depth:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave(name)))

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

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def peak_table(first: dict[str, int], last: dict[str, int], first_name: str = "first") -> str:
    """Markdown rows: module, peak MiB in the ``first_name`` and the last segment, and the difference."""
    rows = [f"| module | {first_name} segment MiB | last segment MiB | last - {first_name} MiB |", "|---|---|---|---|"]
    for name in sorted(set(first) | set(last), key=lambda n: -last.get(n, 0)):
        a, b = first.get(name, 0) / 2**20, last.get(name, 0) / 2**20
        rows.append(f"| {name} | {a:,.1f} | {b:,.1f} | {b - a:+,.1f} |")
    return "\n".join(rows)


def main(run: str, length: int, segment: int, memory: bool, depth: int) -> None:
    dev = torch.device("cuda")
    model = load_model(HSALanguageModel, run, device=dev).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (PERIOD,), generator=g).repeat(length // PERIOD + 1)[:length].view(1, length)
    cache = model.init_cache(1, offload=True, reserve_tokens=length)
    segments = length // segment
    timed = segments if memory else segments - 2
    times: list[float] = []
    peaks = ModulePeaks(model, depth) if memory else None
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
            if peaks is not None:
                taken = peaks.take()
                if i <= 1:
                    second = taken
                last = taken
        for k in [1, 8, 32, 64, 128, 192, 512, len(times) - 1]:
            if k < len(times):
                print(f"segment {k} (context {k * segment:,}): {times[k] * 1e3:.1f} ms")
        print(f"total {sum(times):.1f} s for {len(times)} segments")
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
    parser.add_argument("--depth", type=int, default=3, help="modules up to this many dots deep (--memory)")
    a = parser.parse_args()
    (length,), (segment,) = parse_lengths(a.length), parse_lengths(a.segment)
    main(a.run, length, segment, a.memory, a.depth)
