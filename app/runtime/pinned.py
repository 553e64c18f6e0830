"""Fast pinned host memory for an offloaded chunk memory: torch's pinned allocator options, per process.

A 64M-token context pins 32 GiB of host memory for the chunk K/V. torch's default pinned allocator
(cudaHostAlloc) took 4.07 s per 8 GiB on an H200 machine; with :data:`PINNED_HOST_OPTIONS` (page-lock
ordinary memory with cudaHostRegister on 16 threads) 0.83 s (``bench/results/h200_offload/README.md``).
The options are process-wide, so the application sets them (``hsa eval``, ``hsa generate``, the offload
benchmarks), never the library.
"""

from __future__ import annotations

import os

import torch

__all__ = ["ALLOCATOR_VARIABLES", "PINNED_HOST_OPTIONS", "fast_pinned_memory"]

#: torch's allocator options for pinned host memory registered with cudaHostRegister on 16 threads.
PINNED_HOST_OPTIONS = "pinned_use_cuda_host_register:True,pinned_num_register_threads:16"
#: The environment variables that configure torch's allocators (the CUDA-specific one and the newer one).
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def fast_pinned_memory() -> bool:
    """Give this process :data:`PINNED_HOST_OPTIONS` unless the user configured torch's allocator.

    torch reads the variable when CUDA starts, so this must run before (set after ``import torch`` and
    before CUDA, the options took 8 GiB in 0.83 s; after CUDA had started, 4.67 s). It changes nothing
    once CUDA has started, or when either of :data:`ALLOCATOR_VARIABLES` is set (the user's choice
    stands). Returns whether it set the variable.
    """
    if any(name in os.environ for name in ALLOCATOR_VARIABLES) or torch.cuda.is_initialized():
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = PINNED_HOST_OPTIONS
    return True
