"""The pure-PyTorch HSA ops (exact, differentiable, memory-light; run everywhere).

The math lives beside the kernels, in each op folder's ``naive.py`` (``hsa_kernels.hsa_attention.naive``,
``hsa_kernels.hsa_select.naive``), which imports nothing but torch; this module gives it the names the
dispatch in :mod:`hsa_core.ops` uses.
"""

from __future__ import annotations

from hsa_kernels.host_gather.naive import gather_rows_naive
from hsa_kernels.hsa_attention.naive import hsa_attention_naive as hsa_attention_torch
from hsa_kernels.hsa_select.naive import fusion_weights, visible_chunks
from hsa_kernels.hsa_select.naive import hsa_select_naive as hsa_select_torch

__all__ = ["fusion_weights", "gather_rows_naive", "hsa_attention_torch", "hsa_select_torch", "visible_chunks"]
