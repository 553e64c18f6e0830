"""Data parallelism through ``torchrun``: process-group set-up from the environment and wrapping.

Nothing home-made: ``torch.distributed`` with the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), then DDP or FSDP2
(``torch.distributed.fsdp.fully_shard``). A single process (``WORLD_SIZE`` unset or 1) runs without
a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hsa_core.devices import resolve_device

__all__ = ["DistEnv", "all_reduce_sum", "barrier", "init_distributed", "resolve_device", "shutdown", "wrap_model"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    NCCL on CUDA, gloo on CPU. Each process uses the GPU of its ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world, local, dev)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: Tensor, env: DistEnv) -> Tensor:
    """Sum over ranks (identity in a single process). Returns a new tensor."""
    x = x.detach().clone()
    if env.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def wrap_model(module: nn.Module, env: DistEnv, *, fsdp: bool = False,
               find_unused_parameters: bool = False, param_dtype: torch.dtype | None = None,
               reshard_after_forward: bool = True, blocks_per_unit: int = 1, prefetch: int = 0) -> nn.Module:
    """DDP (default) or FSDP2 around ``module`` when distributed; ``module`` itself otherwise.

    FSDP2 shards every block of ``model.layers``, then the root (the embedding and the tied head,
    the norms and the chunk memories stay in the root's group: the memory returns views of its
    inputs, which FSDP2 warns about for sharded submodules).

    Args:
        param_dtype: FSDP2 only. When set (bf16 under bf16 autocast), parameters are all-gathered and
            computed in this dtype and gradients reduced in fp32 (``MixedPrecisionPolicy``, as
            torchtitan does): half the bytes of an fp32 all-gather, and one cast per step instead of
            one per use. ``None`` keeps fp32 parameters on the wire.
        reshard_after_forward: FSDP2 only. ``True`` frees each block's gathered parameters after its
            forward and gathers them again for the backward (least memory); ``False`` keeps them until
            the backward (one all-gather fewer per step, one block-set of parameters more memory).
        blocks_per_unit: FSDP2 only. Consecutive blocks gathered and reduced together: fewer, larger
            collectives and fewer hooks per step (host time), more parameters gathered at once.
        prefetch: FSDP2 only. ``0``: FSDP2 issues each unit's all-gather when the host reaches it.
            ``N``: each unit explicitly prefetches the next ``N`` units in forward and the previous
            ``N`` in backward (``set_modules_to_forward_prefetch`` / ``..._backward_prefetch``), so the
            all-gathers start before a host that falls behind the GPU gets there.
    """
    if not env.distributed:
        return module
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
        if blocks_per_unit < 1:
            raise ValueError(f"blocks_per_unit must be >= 1, got {blocks_per_unit}")
        model = getattr(module, "model", module)
        blocks = list(getattr(model, "layers", []))
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        units = []  # one FSDPModule per unit (a grouped unit's modules share one FSDP state)
        for i in range(0, len(blocks), blocks_per_unit):
            unit = blocks[i:i + blocks_per_unit]
            fully_shard(unit if len(unit) > 1 else unit[0], mp_policy=mp, reshard_after_forward=reshard_after_forward)
            units.append(unit[0])
        fully_shard(module, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        for i, unit in enumerate(units if prefetch else []):
            if ahead := units[i + 1:i + 1 + prefetch]:
                unit.set_modules_to_forward_prefetch(ahead)
            if behind := units[max(0, i - prefetch):i][::-1]:
                unit.set_modules_to_backward_prefetch(behind)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
