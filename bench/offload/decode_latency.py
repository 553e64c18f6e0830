"""Per-token decode latency of a layout (random weights) at long contexts, with its chunk memory
offloaded to host memory or kept on the GPU.

The context is synthetic: each memory is filled with random K/V and landmarks for ``N / S`` chunks and
the recurrent states start at zero, so a 64M-token context is built in seconds instead of by a
64M-token prefill. A decode step does the same work whatever the values (selection over every
landmark, the selected chunks' K/V copied in and attended, every backbone's one-token update; a
chunk is encoded every S steps), and random landmarks make the selections scattered: each step
copies ``topk`` chunks per retrieval head from the host, the worst case.

    python bench/offload/decode_latency.py --spec ramba-370m --contexts 4k,1m,64m --out decode.json

Prints one row per (context, placement) and writes the JSON: median / p10 / p90 ms per token, GPU
memory allocated and host bytes of the chunk store, and the ratio to the shortest context's median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from hsa_app.evaluation import format_length, parse_lengths
from hsa_app.runtime.pinned import fast_pinned_memory

from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel, ModelCache
from hsa_core.modules import MemoryState

BLOCK_CHUNKS = 1 << 14  # chunks generated per step while filling (bounds the temporaries)


def synthetic_cache(model: HSALanguageModel, context: int, *, offload: bool, dtype: torch.dtype,
                    reserve: int) -> ModelCache:
    """A batch-1 cache after ``context`` tokens (rounded down to whole chunks): random memories, zero states."""
    cache = model.init_cache(1, offload=offload, reserve_tokens=context + reserve)
    device = model.embedding.weight.device
    g = torch.Generator(device).manual_seed(0)
    tokens = context
    for name, mem in model.memories.items():
        S = mem.chunk_size
        C = context // S
        tokens = C * S
        d_rh = mem.landmark_dim // mem.retrieval_heads
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        state = cache.memories[name]
        landmarks = state.landmarks
        for c0 in range(0, C, BLOCK_CHUNKS):
            n = min(BLOCK_CHUNKS, C - c0)
            k = torch.randn(1, n * S, mem.kv_heads, mem.head_dim, device=device, generator=g).to(dtype)
            v = torch.randn(1, n * S, mem.kv_heads, mem.head_dim, device=device, generator=g).to(dtype)
            lmk = torch.randn(1, n, mem.retrieval_heads, d_rh, device=device, generator=g).to(dtype)
            if state.store is not None:
                landmarks = state.store.append(k, v, lmk)
            else:
                parts.append((k, v, lmk))
        pending = torch.zeros(1, 0, model.d_model, device=device, dtype=dtype)
        if state.store is not None:
            empty = torch.zeros(1, 0, mem.kv_heads, mem.head_dim, device=device, dtype=dtype)
            cache.memories[name] = MemoryState(empty, empty.clone(), landmarks, pending, tokens, state.store)
        else:
            k, v, lmk = (torch.cat([p[i] for p in parts], 1) for i in range(3))
            cache.memories[name] = MemoryState(k, v, lmk, pending, tokens)
    cache.position = tokens
    _sync(device)
    return cache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(model: HSALanguageModel, context: int, *, offload: bool, steps: int, warmup: int,
            dtype: torch.dtype) -> dict[str, object]:
    cache = synthetic_cache(model, context, offload=offload, dtype=dtype, reserve=steps + warmup + 1)
    device = model.embedding.weight.device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    times = []
    cuda = device.type == "cuda"
    with torch.autocast("cuda", dtype=dtype, enabled=cuda):
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            out = model(token, cache, return_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
            cache = out.cache
    q = statistics.quantiles(times, n=10)
    row = {"context": context, "offload": offload, "steps": steps, "median_ms": statistics.median(times),
           "p10_ms": q[0], "p90_ms": q[-1], "gpu_allocated_bytes": torch.cuda.memory_allocated() if cuda else None,
           "gpu_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None, "host_bytes": cache.host_nbytes(),
           "cache_device_bytes": cache.nbytes()}
    del cache, out
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="ramba-370m")
    ap.add_argument("--contexts", default="4k,1m,64m")
    ap.add_argument("--placement", choices=("offload", "gpu", "both"), default="both",
                    help="offload: K/V in host memory; gpu: on the device; both (gpu skipped above --gpu-max)")
    ap.add_argument("--gpu-max", default="1m", help="largest context measured with the memory on the GPU")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a smoke test: fp32)")
    args = ap.parse_args()
    fast_pinned_memory()  # as hsa generate: a 64M context pins its K/V reserve at the first step
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU (--device cpu for a smoke test)")
    torch.manual_seed(0)
    from pathlib import Path

    from hsa_core import presets

    spec_path = args.spec if Path(args.spec).is_file() else presets.path(args.spec)  # a file or a preset name
    model = HSALanguageModel.from_spec(load_spec(spec_path), device=args.device).eval()
    cuda = args.device == "cuda"
    gpu_max = parse_lengths(args.gpu_max)[0]
    rows = []
    for context in parse_lengths(args.contexts):
        for offload in (True, False):
            if (offload and args.placement == "gpu") or (not offload and args.placement == "offload"):
                continue
            if not offload and args.placement == "both" and context > gpu_max:
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            row = measure(model, context, offload=offload, steps=args.steps, warmup=args.warmup,
                          dtype=torch.bfloat16 if cuda else torch.float32)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            base = next(r for r in rows if r["offload"] == offload)
            row["vs_shortest"] = row["median_ms"] / base["median_ms"]
            print(f"{format_length(context):>5} {'offload' if offload else 'gpu':>7}: {row['median_ms']:.2f} ms/token "
                  f"(p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}; x{row['vs_shortest']:.2f} of "
                  f"{format_length(base['context'])}), GPU peak {(row['gpu_peak_bytes'] or 0) / 2**30:.2f} GiB, "
                  f"host {row['host_bytes'] / 2**30:.2f} GiB, {row['seconds']} s", flush=True)
    result = {"spec": args.spec, "parameters": model.num_parameters(),
              "dtype": "bf16 autocast (fp32 weights)" if cuda else "fp32", "batch": 1,
              "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
