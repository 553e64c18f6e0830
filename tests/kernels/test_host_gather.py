"""The row gather of the offloaded chunk store (``hsa_kernels.host_gather``) against its naive twin:
odd row sizes, rows longer than one block, repeated and unordered ids, no ids; on CUDA, rows read
straight from pinned host memory."""

from __future__ import annotations

import pytest
import torch
from hsa_kernels.host_gather import gather_rows_naive, gather_rows_triton

from .helpers import DEV


@pytest.mark.triton
@pytest.mark.parametrize("row_shape", [(5, 3, 7), (64, 2, 16), (5000,)],
                         ids=["odd-105", "chunk-2048", "5000-two-blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=["fp32", "bf16", "int64"])
def test_gather_matches_naive(row_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    rows = 37
    src = (torch.randn(rows, *row_shape) * 100).to(dtype)
    if DEV == "cuda":
        src = src.pin_memory()
    index = torch.tensor([3, 0, 36, 3, 10, 36, 1], device=DEV)[torch.randperm(7)]
    got = gather_rows_triton(src, index)
    assert got.device == index.device and got.dtype == dtype and got.shape == (7, *row_shape)
    assert torch.equal(got.cpu(), gather_rows_naive(src, index).cpu())
    assert torch.equal(got.cpu(), src[index.cpu()])


@pytest.mark.triton
def test_no_ids_and_given_output() -> None:
    # on the compute device: compiled Triton (no interpreter) cannot read host tensors that are not pinned
    src = torch.randn(4, 6, device=DEV)
    empty = gather_rows_triton(src, torch.zeros(0, dtype=torch.long, device=DEV))
    assert empty.shape == (0, 6)
    out = torch.full((2, 6), float("nan"), device=DEV)
    got = gather_rows_triton(src, torch.tensor([2, 1], device=DEV), out=out)
    assert got is out and torch.equal(out, src[[2, 1]])


def test_bad_arguments_are_refused() -> None:
    src = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        gather_rows_triton(src.t(), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D"):
        gather_rows_triton(src, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="out must be"):
        gather_rows_triton(src, torch.tensor([0]), out=torch.empty(1, 5))


@pytest.mark.gpu
def test_device_reads_pinned_host_rows() -> None:
    src = torch.randn(1000, 64, 2, 64, dtype=torch.bfloat16).pin_memory()  # 1,000 chunks of K
    index = torch.randint(0, 1000, (333,), device="cuda")
    got = gather_rows_triton(src, index)
    assert got.is_cuda and torch.equal(got.cpu(), src[index.cpu()])
    with pytest.raises(ValueError, match="pinned"):
        gather_rows_triton(torch.randn(10, 4), torch.tensor([1], device="cuda"))
