"""The training configuration (one dataclass, JSON round-trip) and the learning-rate schedule."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved in every checkpoint; ``--resume`` reuses it).

    Data:
        task, task_options: a registered task and its options (``vocab_size`` comes from the model;
            ``min_gap`` defaults to two chunks of the model's smallest memory chunk size).
        seq_len: tokens per training sequence.
        batch_size: *global* sequences per step (split over data-parallel ranks).
        loss_on: ``"answer"`` (answer tokens only) or ``"all"`` (every next-token target).
        concat_segments: ``n > 1`` joins ``n`` unrelated samples of ``seq_len / n`` tokens in one
            sequence (negative sampling, spec section 7).
        data: a folder of ``hsa data prepare`` to train a language model on instead of ``task``
            (:mod:`hsa_app.training.text_data`); then ``packing`` (``concat`` or ``document``: how
            sequences meet document boundaries, :mod:`hsa_app.data.sampler`), ``passkey_mix``
            (fraction of steps that are natural-text passkey batches; ``task_options`` may set their
            ``digits``/``min_gap``) and ``data_fingerprint`` (recorded at the start; resume checks it).
    Optimisation:
        steps, lr, min_lr_ratio (cosine floor as a fraction of ``lr``), warmup (linear, steps),
        weight_decay (AdamW, on matrices only), beta1, beta2, grad_clip (global norm; 0 = off).
    RAMba training options (spec section 7):
        state_reset_every: zero the backbone (mixer) states every N tokens inside a sequence while
            the chunk memory and the position persist, so long-range information must go through HSA.
        carry_state: start each batch from the final mixer states of the previous batch (another
            segment's state) instead of zeros ...
        memory_reset_every: ... replaced by zeros every this many batches (the paper: 64).
    Initialisation:
        init_from: start from the weights of this model directory (``RUN/model`` of an earlier run,
            e.g. a shorter-context stage of a curriculum) instead of a fresh initialisation; the
            optimizer starts fresh. The layout must match.
        freeze: regular expressions (``re.search``) over parameter names: the parameters that match
            are not trained (no gradient, not in the optimizer; a fine-tune that must not move the
            embeddings or a chunk memory's encoder). Each must match at least one parameter.
    Runtime:
        device (``auto`` = CUDA when available), dtype (``auto`` = bf16 autocast on CUDA, fp32 on CPU;
        or ``fp32``/``bf16``), seed, eval_every / eval_samples / eval_lengths (periodic exact-match
        eval; lengths default to ``[seq_len]``), eval_segment_len, checkpoint_every, keep_checkpoints,
        log_every, fsdp (FSDP2 ``fully_shard`` instead of DDP when distributed), fsdp_param_dtype
        (``fp32``: FSDP2 gathers fp32 parameters, autocast casts them; ``bf16``: gathers and computes
        parameters in bf16 and reduces gradients in fp32, torchtitan's policy; measured slower here, see
        bench/results/h200_model/README.md), fsdp_reshard (free gathered parameters after each
        block's forward; ``False`` keeps them for the backward: one all-gather fewer, more memory),
        fsdp_blocks_per_unit (consecutive blocks sharded as one FSDP2 unit: fewer collectives and hooks),
        fsdp_prefetch (0: FSDP2's own scheduling; N: each unit issues the all-gathers of the next N units
        in forward and of the previous N in backward from the CPU as soon as its own are done, which
        helps when the host falls behind the GPU; more reserved memory),
        find_unused_parameters (DDP), compile (``torch.compile`` the model), checkpoint_activations
        (recompute every block in backward instead of keeping its activations: less memory, ~30% more time).
    """

    task: str = "passkey"
    task_options: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 512
    batch_size: int = 8
    loss_on: str = "answer"
    concat_segments: int = 1
    data: str | None = None
    packing: str = "concat"
    passkey_mix: float = 0.0
    data_fingerprint: str | None = None
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    state_reset_every: int | None = None
    carry_state: bool = False
    memory_reset_every: int = 64
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    eval_every: int = 0
    eval_samples: int = 32
    eval_lengths: list[int] | None = None
    eval_segment_len: int = 4096
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    fsdp: bool = False
    fsdp_param_dtype: str = "fp32"
    fsdp_reshard: bool = True
    fsdp_blocks_per_unit: int = 1
    fsdp_prefetch: int = 0
    find_unused_parameters: bool = False
    compile: bool = False
    checkpoint_activations: bool = False

    def __post_init__(self) -> None:
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"freeze: {pattern!r} is not a regular expression ({exc})") from None
        if self.loss_on not in ("answer", "all"):
            raise ValueError(f"loss_on must be 'answer' or 'all', got {self.loss_on!r}")
        if self.fsdp_blocks_per_unit < 1:
            raise ValueError(f"fsdp_blocks_per_unit must be >= 1, got {self.fsdp_blocks_per_unit}")
        if self.fsdp_prefetch < 0:
            raise ValueError(f"fsdp_prefetch must be >= 0, got {self.fsdp_prefetch}")
        if self.fsdp_param_dtype not in ("fp32", "bf16"):
            raise ValueError(f"fsdp_param_dtype must be fp32 or bf16, got {self.fsdp_param_dtype!r}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        for name in ("seq_len", "batch_size", "steps", "concat_segments", "memory_reset_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.packing not in ("concat", "document"):
            raise ValueError(f"packing must be 'concat' or 'document', got {self.packing!r}")
        if not 0.0 <= self.passkey_mix < 1.0:
            raise ValueError(f"passkey_mix must be in [0, 1), got {self.passkey_mix}")
        if self.state_reset_every is not None and self.state_reset_every < 1:
            raise ValueError("state_reset_every must be >= 1 tokens")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to
    ``min_lr_ratio * lr`` at the last step. A pure function of the step, so resuming needs no
    scheduler state."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))
