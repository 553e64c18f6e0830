"""NCCL bandwidth between the GPUs of this machine (run under torchrun, one process per GPU).

Times ``all_gather_into_tensor``, ``reduce_scatter_tensor`` and ``all_reduce`` on a buffer of
``--mib`` MiB per rank and prints the bus bandwidth as nccl-tests defines it (algorithm bandwidth
times (n-1)/n, and 2(n-1)/n for all-reduce), so that a data-parallel step's communication can be
costed: ``torchrun --standalone --nproc-per-node 2 bench/model/nccl_bandwidth.py``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=256, help="bytes per rank, in MiB (bf16 elements)")
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    n = a.mib * 2**20 // 2
    shard = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    full = torch.empty(n * world, device="cuda", dtype=torch.bfloat16)
    ops = {
        "all_gather": (lambda: dist.all_gather_into_tensor(full, shard), (world - 1) / world, n * world),
        "reduce_scatter": (lambda: dist.reduce_scatter_tensor(shard, full), (world - 1) / world, n * world),
        "all_reduce": (lambda: dist.all_reduce(full), 2 * (world - 1) / world, n * world),
    }
    for name, (op, factor, elems) in ops.items():
        for _ in range(3):
            op()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.iters):
            op()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / a.iters
        bus = elems * 2 / (ms / 1e3) * factor / 1e9
        if rank == 0:
            print(f"nccl {name}: {elems * 2 / 2**20:,.0f} MiB in {ms:.2f} ms, bus bandwidth {bus:,.1f} GB/s")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
