"""Where an offloaded long prefill spends its time (CUDA only).

Runs a batch-1 prefill of LENGTH tokens of periodic filler (a 997-token random pattern, like the
passkey task's repeated filler) through the model in 16K-token segments with its chunk memory
offloaded, prints the wall time of some segments along the way (how the per-segment cost grows
with the context), then profiles the last two segments with ``torch.profiler`` and prints the top
operators by GPU time and by CPU time.

    python3 bench/offload/profile_prefill.py runs/offload/ramba-sm/model 4194304
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hsa_core.io import load_model
from hsa_core.model import HSALanguageModel

SEGMENT = 16384
PERIOD = 997


def main(run: str, length: int) -> None:
    dev = torch.device("cuda")
    model = load_model(HSALanguageModel, run, device=dev).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (PERIOD,), generator=g).repeat(length // PERIOD + 1)[:length].view(1, length)
    cache = model.init_cache(1, offload=True, reserve_tokens=length)
    segments = length // SEGMENT
    times: list[float] = []
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for i in range(segments - 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, cache = model.forward_hidden(ids[:, i * SEGMENT:(i + 1) * SEGMENT].to(dev), cache, return_cache=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        for k in [1, 8, 32, 64, 128, 192, len(times) - 1]:
            if k < len(times):
                print(f"segment {k} (context {k * SEGMENT:,}): {times[k] * 1e3:.1f} ms")
        print(f"total {sum(times):.1f} s for {len(times)} segments")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(segments - 2, segments):
                _, cache = model.forward_hidden(ids[:, i * SEGMENT:(i + 1) * SEGMENT].to(dev), cache,
                                                return_cache=True)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: profile_prefill.py RUN_OR_MODEL_DIR LENGTH")
    main(sys.argv[1], int(sys.argv[2]))
