"""Runs each forward schedule of the HSA attention once at T=64K, for Nsight Compute to profile.

    ncu --clock-control none -k regex:_hsa_fwd --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy python3 bench/profile/ncu_fwd.py
(kernels: query-outer, chunk-outer atomic, chunk-outer with per-pair buffer, in that order;
bench/results/h200/ncu_fwd.txt is its output. ncu_chunk_last.txt came from commit 500e91f's version.)
"""

import hsa_kernels.hsa_attention.function as fn
import torch
from hsa_kernels import benchmark as bm

T = 65536
q, k, v, idx, w = bm.make_inputs(T, 1)
scale = bm.D ** -0.5
with torch.no_grad():
    fn.hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, store_lse=False, mode="query")
    fn.CONFIG.update(fwd_token_block=2048, fwd_chunk_stages=1)
    inv = fn.build_inverse_index(idx, T // bm.S, 1024, token_block=2048)
    fn.hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, store_lse=False, inv=inv, mode="chunk_atomic")
    fn.CONFIG.update(fwd_chunk_stages=2)
    inv = fn.build_inverse_index(idx, T // bm.S, 1024)
    fn.hsa_attention_fwd(q, k, v, idx, w, bm.S, scale, False, store_lse=False, inv=inv, mode="chunk")
torch.cuda.synchronize()
print("done")
