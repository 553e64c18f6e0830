"""Runs each forward schedule of the HSA attention once at T=64K, for Nsight Compute to profile.

    ncu --clock-control none -k regex:_hsa_fwd --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy python3 bench/profile/ncu_fwd.py
(kernels, in order: query-outer on a uniform selection; token-block, then query-outer skipping the
shared blocks, on one selection shared per 64-token block. bench/results/h200/ncu_fwd.txt holds the
query-outer profile from commit 4b3946b's version of this script.)
"""

import sys
from pathlib import Path

import torch
from hsa_kernels.hsa_attention.forward import hsa_attention_fwd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the harness's input generator
import bench_kernels as bm

T = 65536
scale = bm.D ** -0.5
with torch.no_grad():
    q, k, v, idx, w = bm.make_inputs(T, 1)
    hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, schedule="query", store_lse=False)
    q, k, v, idx, w = bm.make_inputs(T, 1, selection="block")
    hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, schedule="block", store_lse=False)
torch.cuda.synchronize()
print("done")
