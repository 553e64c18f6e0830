"""Fused HSA selection: naive twin (``naive``), Triton kernel (``kernels``), autograd function (``function``)."""

from .function import HSASelectFunction, hsa_select_triton
from .naive import hsa_select_naive

__all__ = ["HSASelectFunction", "hsa_select_naive", "hsa_select_triton"]
