"""Whole-model training throughput: what ``hsa bench model`` measures.

One training step here is exactly :func:`hsa_core.training.train`'s step: bf16 autocast, the
:class:`~hsa_core.training.segments.SegmentedForward` with the fused LM head + cross-entropy over
every position, backward, gradient clipping, fused AdamW. Per layout and shape it reports:

* ``first_step_s``: wall time of the first step on a fresh process (kernel compilation and
  autotuning included: what a user waits before the progress bar moves);
* ``tokens_per_s``, ``step_ms``: median-free steady state, ``steps`` timed steps after ``warmup``
  untimed ones, with CUDA events around the whole loop;
* ``tflops`` and ``mfu``: model FLOPs per token ``6 * N_matmul + 6 * attention`` (below), times
  tokens/s; MFU against the dense bf16 peak given (H200 SXM datasheet: 989 TFLOP/s);
* ``peak_gib``: ``torch.cuda.max_memory_allocated`` over the timed steps;
* ``parts_ms``: forward+backward time of each part measured alone on the inputs it received in
  the model (one instance timed, times the number of instances): the backbone blocks by kind, the
  HSA layers, the chunk-memory encoder, the selection, the LM head + loss, and the optimizer step.
  ``other`` is the step minus their sum (embedding, final norm, gradient clipping, launch gaps).

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
from torch import Tensor, nn

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
    from ..layout import resolve

    m = spec["model"]
    d = m["d_model"]

    def build(n: int) -> dict[str, Any]:
        return {"version": 1, "name": f"transformer-{n}x{d}", "model": dict(m),
                "layers": [{"kind": "attention", "mlp": True, "num_heads": max(1, d // head_dim)}] * n}

    def count(n: int) -> int:
        from ..model import HSALanguageModel

        return HSALanguageModel.from_spec(resolve(build(n)), device="meta").num_parameters()

    base, one = count(1), count(2)
    per_layer = one - base
    n = max(1, round((params - (base - per_layer)) / per_layer))
    return resolve(build(n))


# -- FLOPs ---------------------------------------------------------------------------------------------
def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) by the formula in the module docstring."""
    from ..model import HSALanguageModel

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


def _time_ms(fn: Callable[[], Any], reps: int = 5) -> float:
    """Median CUDA-event time of ``fn`` over ``reps`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        _sync()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _leaf(x: Any) -> Any:
    """A detached copy of ``x`` whose floating tensors require grad (inputs of an isolated replay)."""
    if isinstance(x, Tensor):
        return x.detach().requires_grad_(x.is_floating_point())
    if hasattr(x, "_fields"):  # NamedTuple (Selection)
        return type(x)(*(_leaf(v) for v in x))
    if hasattr(x, "__dataclass_fields__"):  # MemoryState
        import dataclasses

        return dataclasses.replace(x, **{f: _leaf(getattr(x, f)) for f in x.__dataclass_fields__})
    return x


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if hasattr(out, "__dataclass_fields__"):  # MemoryState: k, v and landmarks all carry gradient
        return out.k.float().sum() + out.v.float().sum() + out.landmarks.float().sum()
    if hasattr(out, "weights"):  # Selection
        return out.weights
    raise TypeError(f"cannot time the output {type(out).__name__}")


def _part_of(name: str, module: nn.Module, spec: Mapping[str, Any]) -> str | None:
    from ..model import Block, RetrievalBlock

    if name.startswith("layers.") and name.count(".") == 1:
        i = int(name.split(".")[1])
        if isinstance(module, Block):
            return f"backbone:{spec['layers'][i]['kind']}"
        if isinstance(module, RetrievalBlock):
            return f"retrieval:{spec['layers'][i]['kind']}" + (" (+selection)" if module.retrieval else "")
    if name.startswith("memories.") and name.count(".") == 1:
        return "memory encoder"
    if name.startswith("selections.") and name.count(".") == 1:
        return "selection"
    return None


def _parts_ms(model: nn.Module, run_forward: Callable[[], Any], amp: torch.dtype) -> dict[str, float]:
    """Each part's fwd+bwd time alone, times its number of instances (see the module docstring)."""
    captured: dict[str, tuple[nn.Module, tuple, dict]] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        part = _part_of(name, module, model.spec)
        if part is None:
            continue
        counts[part] = counts.get(part, 0) + 1

        def pre(mod: nn.Module, args: tuple, kwargs: dict, part: str = part) -> None:
            if part not in captured:
                captured[part] = (mod, tuple(_leaf(a) for a in args), {k: _leaf(v) for k, v in kwargs.items()})

        hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in hooks:
            h.remove()
    times: dict[str, float] = {}
    for part, (mod, args, kwargs) in captured.items():
        def fwd_bwd(mod: nn.Module = mod, args: tuple = args, kwargs: dict = kwargs) -> None:
            with torch.autocast("cuda", dtype=amp):
                out = _first_tensor(mod(*args, **kwargs))
            out.backward(torch.ones_like(out) if out.dim() else None)

        try:
            times[part] = _time_ms(fwd_bwd) * counts[part]
        except Exception as exc:  # a part that cannot run alone is reported, not fatal
            times[part] = float("nan")
            print(f"  (part {part!r} not timed alone: {type(exc).__name__}: {exc})")
    model.zero_grad(set_to_none=True)
    return times


def bench_layout(spec: Mapping[str, Any], *, name: str, variant: str, seq_len: int, batch: int,
                 steps: int = 10, warmup: int = 3, checkpointing: bool = False, parts: bool = True,
                 peak_tflops: float = H200_BF16_PEAK_TFLOPS, seed: int = 0) -> ModelBenchResult:
    """Build ``spec`` on the current CUDA device and time training steps (see the module docstring).

    Out of memory is a result (``error="out of memory"``), not an exception.
    """
    from ..losses import linear_cross_entropy
    from ..model import HSALanguageModel
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
            res.parts_ms = _parts_ms(model, lambda: model.forward_hidden(inputs), amp)
            hidden = torch.randn(batch * seq_len, model.d_model, device=device, requires_grad=True)

            def head() -> None:
                with torch.autocast("cuda", dtype=amp):
                    out = linear_cross_entropy(hidden, model.lm_head.weight, targets.reshape(-1))
                out.backward()

            res.parts_ms["LM head + loss"] = _time_ms(head)
            model.zero_grad(set_to_none=True)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            res.parts_ms["optimizer"] = _time_ms(optimizer.step)
            measured = sum(v for v in res.parts_ms.values() if v == v)
            res.parts_ms["other"] = ms - measured
    except torch.OutOfMemoryError:
        res.error = "out of memory"
    return res
