"""Naive decode: the reference attention at T == 1 (``hsa_attention_naive``; shapes as in ``decode.py``)."""

from __future__ import annotations

from ..hsa_attention.naive import hsa_attention_naive as hsa_decode_naive

__all__ = ["hsa_decode_naive"]
