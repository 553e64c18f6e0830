"""Record a launch table (``hsa_backbones.launch_tables``) on this GPU: time every candidate
configuration of mamba-ssm's and fla's kernels in one training step of each layout's backbone, and keep
the fastest per kernel and autotune key.

    # N processes, each timing every N-th candidate of every kernel (compilation is what takes long:
    # minutes per layout in one process), then the fastest per kernel and key over all shards:
    for i in 0 1 2 3; do python3 bench/model/record_launch_table.py ramba-370m gla-hsa --shard $i/4 \\
        --out shard$i.json & done; wait
    python3 bench/model/record_launch_table.py --merge shard*.json --out backbones/launch_tables/sm90.json

What runs is each layout's *probe*: its distinct backbone blocks, HSA layers removed, at the layout's
width, trained for one step at ``--seq-len`` x ``--batch``. The autotune keys of these kernels are
shapes of the block (head dims, state size, chunk size), not the sequence length, batch or depth, so the
winners of the probe serve the whole model at every length. Shards that share a GPU time their
candidates beside each other's kernels: the winners are good, not necessarily the best.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ["HSA_AUTOTUNE"] = "full"  # before the backbones load: every candidate is timed
PACKAGES = ["mamba_ssm", "fla"]


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "triton", "mamba-ssm", "flash-linear-attention", "fla-core"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def probe_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec``'s distinct backbone blocks (one of each kind and options), without memories or HSA."""
    out = copy.deepcopy(spec)
    seen, layers = set(), []
    for layer in spec["layers"]:
        if layer["role"] != "backbone":
            continue
        ident = json.dumps({k: v for k, v in layer.items() if k != "index"}, sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            layers.append({k: v for k, v in layer.items() if k != "index"})
    out.update(layers=layers, memories={}, retrieval={}, name=f"{spec.get('name', 'layout')}-probe")
    return out


def _shard_and_log(shard: int, shards: int, log: dict[str, dict[str, dict[str, float]]]) -> None:
    """Keep every ``shards``-th candidate of each kernel (offset ``shard``) and the safest one, and log
    the time of every candidate benchmarked, per kernel and autotune key (computed as Triton's
    ``Autotuner.run`` does)."""
    from hsa_backbones.launch_tables import autotuners, config_record, safest_config

    for name, tuner in autotuners(PACKAGES):
        if getattr(tuner, "_hsa_logged", False):
            continue
        configs = tuner.configs
        mine = configs[shard::shards] or [configs[shard % len(configs)]]
        fallback = safest_config(configs)  # two candidates at least: Triton skips one that does not fit
        tuner.configs = mine if fallback in mine else [*mine, fallback]  # only when it has two to time
        bench = tuner._bench

        def logged(*args, config, _bench=bench, _tuner=tuner, _name=name, **kwargs):
            timing = _bench(*args, config=config, **kwargs)
            all_args = {k: v for k, v in {**_tuner.nargs, **kwargs}.items() if k in _tuner.arg_names}
            key = [all_args[k] for k in _tuner.keys if k in all_args]
            key += [str(v.dtype) for v in all_args.values() if hasattr(v, "dtype")]
            ms = timing[0] if isinstance(timing, list | tuple) else timing
            per_key = log.setdefault(_name, {}).setdefault(json.dumps(key, default=str), {})
            per_key[json.dumps(config_record(config), sort_keys=True)] = float(ms)
            return timing

        tuner._bench = logged  # instance attribute: Autotuner.run calls self._bench
        tuner._hsa_logged = True


def record(specs: list[str], seq_len: int, batch: int, shard: int, shards: int, out: Path) -> None:
    """Time this shard's candidates in each layout's probe; ``out`` is rewritten after each layout, so
    a shard stopped by a time limit still leaves what it measured."""
    import torch
    from hsa_app.training.throughput import bench_layout
    from hsa_backbones.fast_paths import causal_conv_kernel, mamba_triton
    from hsa_cli._common import load_spec_from

    from hsa_core.layout import resolve
    from hsa_core.model import HSALanguageModel

    if not torch.cuda.is_available():
        raise SystemExit("error: recording a launch table needs a CUDA GPU")
    major, minor = torch.cuda.get_device_capability()
    log: dict[str, dict[str, dict[str, float]]] = {}
    runs = []
    for source in specs:
        _, raw = load_spec_from(source, [])
        probe = resolve(probe_spec(resolve(raw)))
        HSALanguageModel.from_spec(probe, device="meta")  # imports fla's kernels, so they can be sharded
        mamba_triton(), causal_conv_kernel()  # imported at the first CUDA forward otherwise: too late
        _shard_and_log(shard, shards, log)
        t0 = time.perf_counter()
        res = bench_layout(probe, name=source, variant="probe", seq_len=seq_len, batch=batch, steps=1,
                           warmup=0, parts=False)
        print(f"{source} shard {shard}/{shards}: {res.error or 'ok'} ({time.perf_counter() - t0:.0f} s)", flush=True)
        runs.append({"spec": source, "probe_layers": len(probe["layers"]), "seq_len": seq_len, "batch": batch,
                     "error": res.error})
        _write(out, {"arch": f"sm{major}{minor}", "device": torch.cuda.get_device_name(),
                     "versions": _versions(), "recorded_from": runs, "timings": log})


def merge(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest configuration per kernel and key over all shards; a kernel's table entry is the set
    of its per-key winners."""
    archs = {s["arch"] for s in shards}
    if len(archs) != 1:
        raise SystemExit(f"error: the shards were recorded on different architectures: {sorted(archs)}")
    best: dict[str, dict[str, tuple[float, str]]] = {}
    for s in shards:
        for kernel, keys in s["timings"].items():
            for key, timings in keys.items():
                for config, ms in timings.items():
                    have = best.setdefault(kernel, {}).get(key)
                    if have is None or ms < have[0]:
                        best[kernel][key] = (ms, config)
    kernels = {k: [json.loads(c) for c in sorted({config for _, config in keys.values()})]
               for k, keys in sorted(best.items())}
    return {"arch": shards[0]["arch"], "device": shards[0]["device"], "versions": shards[0]["versions"],
            "recorded_from": shards[0]["recorded_from"], "shards": len(shards),
            "best_ms": {k: {key: round(ms, 4) for key, (ms, _) in keys.items()} for k, keys in sorted(best.items())},
            "kernels": kernels}


def _write(path: Path, data: dict[str, Any]) -> None:
    from hsa_app.runtime.checkpoint import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", help="layout files or preset names whose backbones to time")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--shard", default="0/1", help="I/N: time every N-th candidate, from the I-th")
    ap.add_argument("--merge", nargs="+", type=Path, default=[], help="shard files to merge into a table")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if bool(args.specs) == bool(args.merge):
        ap.error("give SPECs to record one shard, or shard files to --merge")
    if args.merge:
        table = merge([json.loads(p.read_text()) for p in args.merge])
        _write(args.out, table)
        print(f"wrote {args.out}: {len(table['kernels'])} kernels, "
              f"{sum(map(len, table['kernels'].values()))} configurations")
        return
    shard, shards = (int(x) for x in args.shard.split("/"))
    record(args.specs, args.seq_len, args.batch, shard, shards, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
