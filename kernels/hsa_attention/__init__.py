"""HSA attention: naive twin (``naive``), Triton kernels (``kernels``), autograd function (``function``)."""

from .function import HSAAttentionFunction, hsa_attention_triton
from .naive import hsa_attention_naive

__all__ = ["HSAAttentionFunction", "hsa_attention_naive", "hsa_attention_triton"]
