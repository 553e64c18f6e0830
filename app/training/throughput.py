"""Whole-model training throughput: what ``hsa bench model`` measures.

One training step here is exactly :func:`hsa_app.training.train`'s step: bf16 autocast, the
:class:`~hsa_app.training.segments.SegmentedForward` with the fused LM head + cross-entropy over
every position, backward, gradient clipping, fused AdamW. Per layout and shape it reports:

* ``first_step_s``: wall time of the first step on a fresh process (kernel compilation and
  autotuning included: what a user waits before the progress bar moves);
* ``tokens_per_s``, ``step_ms``: median-free steady state, ``steps`` timed steps after ``warmup``
  untimed ones, with CUDA events around the whole loop;
* ``tflops`` and ``mfu``: model FLOPs per token ``6 * N_matmul + 6 * attention`` (below), times
  tokens/s; MFU against the dense bf16 peak given (H200 SXM datasheet: 989 TFLOP/s);
* ``peak_gib``: ``torch.cuda.max_memory_allocated`` over the timed steps;
* ``parts_ms``: where the GPU time of one profiled step goes, by kernel family (:data:`KERNEL_FAMILIES`:
  the SSD scan, HSA kernels, matmuls, norms, ...), from ``torch.profiler``; the step time not spent
  in any kernel is reported as idle (launch gaps, host work). ``top_kernels``: the 25 costliest.

FLOPs counted (the convention of the PaLM/Megatron MFU formula): every ``nn.Linear`` and embedding
used as the LM head, 6 per parameter per token (forward 2, backward 4); the HSA attention,
``6 * 2 * 2 * topk * S * D * HQ`` per token (two ``S x D`` products per selected chunk and query
head); softmax attention of SDPA layers, ``6 * 2 * 2 * D * HQ * T_eff`` with ``T_eff`` the mean
number of keys a query sees (causal: ``T/2``, window ``W``: ``min(W, T/2)``). SSM scans, convolutions,
norms and the selection scores are not counted (they are small next to the projections at d=1024).
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ModelBenchResult", "bench_layout", "equal_transformer_spec", "model_flops_per_token",
           "no_hsa_spec"]

H200_BF16_PEAK_TFLOPS = 989.0


@dataclass
class ModelBenchResult:
    name: str
    variant: str  # "layout", "no-hsa" or "transformer"
    params: int
    seq_len: int
    batch: int
    checkpointing: bool
    tokens_per_s: float | None = None
    step_ms: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    first_step_s: float | None = None
    loss: float | None = None
    parts_ms: dict[str, float] = field(default_factory=dict)
    top_kernels: list[tuple[str, float, int]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the comparison layouts --------------------------------------------------------------------------
def no_hsa_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical ``spec`` with its retrieval layers, memories and selections removed."""
    out = copy.deepcopy(dict(spec))
    out["layers"] = [{k: v for k, v in layer.items() if k != "index"}
                     for layer in out["layers"] if layer["role"] == "backbone"]
    out["memories"], out["retrieval"] = {}, {}
    out["name"] = f"{spec.get('name', 'layout')}-no-hsa"
    return out


def equal_transformer_spec(spec: Mapping[str, Any], params: int, *, head_dim: int = 64) -> dict[str, Any]:
    """A Transformer (full causal ``attention`` + SwiGLU MLP blocks, SDPA) with the width, vocabulary and
    embedding tying of ``spec`` and the layer count that brings it closest to ``params`` parameters.

    MLP hidden size: the model's ``mlp_hidden`` (the toolkit's default rule, 8/3 d rounded up to 128).
    """
    from hsa_core.layout import resolve

    m = spec["model"]
    d = m["d_model"]

    def build(n: int) -> dict[str, Any]:
        return {"version": 1, "name": f"transformer-{n}x{d}", "model": dict(m),
                "layers": [{"kind": "attention", "mlp": True, "num_heads": max(1, d // head_dim)}] * n}

    def count(n: int) -> int:
        from hsa_core.model import HSALanguageModel

        return HSALanguageModel.from_spec(resolve(build(n)), device="meta").num_parameters()

    base, one = count(1), count(2)
    per_layer = one - base
    n = max(1, round((params - (base - per_layer)) / per_layer))
    return resolve(build(n))


# -- FLOPs ---------------------------------------------------------------------------------------------
def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) by the formula in the module docstring."""
    from hsa_core.model import HSALanguageModel

    linear = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    flops = 6.0 * linear
    if isinstance(model, HSALanguageModel):
        spec = model.spec
        for layer in spec["layers"]:
            opts = layer["options"]
            if layer["role"] == "retrieval":
                mem = spec["memories"][layer["memory"]]
                sel = spec["retrieval"][layer["selection"]]
                flops += 6 * 4 * sel["topk"] * mem["chunk_size"] * mem["head_dim"] * opts.get("num_heads", 1)
            elif layer["kind"] in ("attention", "swa"):
                heads = opts.get("num_heads", 1)
                head_dim = opts.get("head_dim") or model.d_model // heads
                keys = seq_len / 2 if layer["kind"] == "attention" else min(opts.get("window", seq_len), seq_len / 2)
                flops += 6 * 4 * head_dim * heads * keys
    return flops


# -- timing ----------------------------------------------------------------------------------------------
def _sync() -> None:
    torch.cuda.synchronize()


# Kernel families of a profiled step, matched in this order against the kernel name (lower case).
KERNEL_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HSA attention + selection", ("_hsa_", "hsa_", "inverse_index", "_select")),
    ("Mamba2 SSD scan", ("chunk_scan", "chunk_state", "state_passing", "bmm_chunk", "chunk_cumsum", "ssd")),
    ("gated RMSNorm (mamba-ssm)", ("_layer_norm_fwd", "_layer_norm_bwd")),
    ("causal conv", ("causal_conv", "conv1d", "conv_depthwise", "depthwise")),
    ("attention (SDPA)", ("flash", "fmha", "attention", "cudnn")),
    ("matmul (projections, LM head)", ("gemm", "sm90", "cutlass", "nvjet", "xmma", "matmul", "cublas")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("reductions (norms, softmax, loss)", ("reduce", "softmax", "logsumexp", "norm")),
    ("elementwise and copies", ("elementwise", "vectorized", "copy", "cat", "index", "scatter", "gather",
                                "fill", "unrolled", "triton_")),
)


def _family(kernel: str) -> str:
    name = kernel.lower()
    for family, keys in KERNEL_FAMILIES:
        if any(k in name for k in keys):
            return family
    return "other kernels"


def profile_step(step: Callable[[], Any]) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """GPU time of one training step by kernel family, and the 25 most expensive kernels.

    Returns ``({family: ms}, [(kernel name, ms, calls), ...])`` from ``torch.profiler`` (CUDA activity
    only: the time the GPU spent in each kernel; gaps between kernels are not in it).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        _sync()
    families: dict[str, float] = {}
    kernels: list[tuple[str, float, int]] = []
    for evt in prof.key_averages():
        ms = getattr(evt, "device_time_total", getattr(evt, "cuda_time_total", 0.0)) / 1e3
        device_type = str(getattr(evt, "device_type", "CUDA"))
        if ms <= 0 or not device_type.endswith("CUDA"):
            continue
        families[_family(evt.key)] = families.get(_family(evt.key), 0.0) + ms
        kernels.append((evt.key[:120], ms, evt.count))
    kernels.sort(key=lambda k: -k[1])
    return dict(sorted(families.items(), key=lambda kv: -kv[1])), kernels[:25]


def bench_layout(spec: Mapping[str, Any], *, name: str, variant: str, seq_len: int, batch: int,
                 steps: int = 10, warmup: int = 3, checkpointing: bool = False, parts: bool = True,
                 peak_tflops: float = H200_BF16_PEAK_TFLOPS, seed: int = 0) -> ModelBenchResult:
    """Build ``spec`` on the current CUDA device and time training steps (see the module docstring).

    Out of memory, or any error while training, is a result (``error``: its first line), not an exception.
    """
    from hsa_core.model import HSALanguageModel

    from .segments import SegmentedForward

    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(seed)
    gc.collect()  # the previous row's model and optimizer are garbage once its call returned
    torch.cuda.empty_cache()
    model = HSALanguageModel.from_spec(spec, device=device)
    model.gradient_checkpointing = checkpointing
    res = ModelBenchResult(name, variant, model.num_parameters(), seq_len, batch, checkpointing)
    forward = SegmentedForward(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    amp = torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (batch, seq_len + 1), device=device, generator=gen)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = torch.ones_like(targets, dtype=torch.bool)
    last = {"loss": float("nan")}

    def step() -> None:
        with torch.autocast("cuda", dtype=amp):
            loss_sum, _, _ = forward(inputs, targets=targets, loss_mask=mask)
        loss = loss_sum / targets.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last["loss_t"] = loss.detach()

    try:
        model.train()
        t0 = time.perf_counter()
        step()
        _sync()
        res.first_step_s = time.perf_counter() - t0
        for _ in range(warmup):
            step()
        _sync()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        _sync()
        ms = start.elapsed_time(end) / steps
        res.step_ms = ms
        res.tokens_per_s = batch * seq_len / (ms / 1e3)
        res.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        res.loss = float(last["loss_t"])
        res.tflops = model_flops_per_token(model, seq_len) * res.tokens_per_s / 1e12
        res.mfu = res.tflops / peak_tflops
        if parts:
            res.parts_ms, res.top_kernels = profile_step(step)
            res.parts_ms["idle (launch gaps, host)"] = max(0.0, ms - sum(res.parts_ms.values()))
    except torch.OutOfMemoryError:
        res.error = "out of memory"
    except Exception as exc:  # a row that cannot train is a result too (its message, first line)
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return res
