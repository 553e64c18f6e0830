"""The ``hsa train`` loop: data from a task, AdamW with warm-up + cosine, bf16 autocast on CUDA,
gradient clipping, periodic evaluation, atomic checkpoints with exact resume, DDP/FSDP2 via torchrun.

Exact resume: everything a step depends on is either a pure function of the step number (the data:
each step's global batch is sampled from ``seed`` and the step; the learning rate) or saved in the
checkpoint (weights, AdamW state, every RNG, the carried mixer states and their batch counter). A run
killed after step ``k`` and resumed from its checkpoint at ``c <= k`` therefore recomputes steps
``c+1 ..`` bit for bit, and ``metrics.jsonl`` is cut back to step ``c`` before appending.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hsa_core.errors import InvalidFileError, UsageError

from ..runtime import checkpoint as ckpt
from ..runtime.distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown, wrap_model
from ..tasks import Task, TaskBatch, make_task
from .config import TrainConfig, lr_at
from .profiling import ProfileWindow, StepProfiler
from .segments import EvalAdapter as _EvalAdapter
from .segments import SegmentedForward, detach_states, step_seed

ModelFactory = Callable[[Mapping[str, Any]], nn.Module]


class RunExistsError(UsageError):
    """The run directory already has checkpoints and ``resume`` was not asked for."""


class NoCheckpointError(UsageError):
    """``resume`` was asked for, but the run directory has no complete checkpoint."""


@dataclass
class TrainResult:
    """What a call of :func:`train` did: steps ``start_step + 1 .. step`` of ``total_steps``.

    ``final_loss`` is the loss of the last step *of the run* (from ``metrics.jsonl`` when this call
    had nothing left to do); ``seconds`` is this call's wall time.
    """

    run: Path
    step: int
    final_loss: float
    metrics: list[dict[str, Any]]
    seconds: float
    eval: dict[str, Any] | None = None
    start_step: int = 0
    total_steps: int | None = None


def default_model_factory(spec: Mapping[str, Any]) -> nn.Module:
    from hsa_core.model import HSALanguageModel

    return HSALanguageModel.from_spec(spec)


def task_for_spec(cfg: TrainConfig, spec: Mapping[str, Any]) -> Task:
    """The configured task, with ``vocab_size`` from the model and ``min_gap`` = two chunks."""
    from ..tasks import registry

    info = registry().get(cfg.task)
    opts = dict(cfg.task_options)
    if "vocab_size" in info.defaults:
        opts.setdefault("vocab_size", spec["model"]["vocab_size"])
    if "min_gap" in info.defaults and opts.get("min_gap") is None:
        sizes = [m["chunk_size"] for m in spec.get("memories", {}).values()]
        opts["min_gap"] = 2 * min(sizes) if sizes else 128  # the passkey protocol: two chunks
    return make_task(cfg.task, **opts)


def global_batch(task: Task, cfg: TrainConfig, step: int) -> TaskBatch:
    """The global batch of ``step`` (identical on every rank and on resume)."""
    if hasattr(task, "global_batch"):  # language-model data (hsa_app.training.text_data.TextData)
        return task.global_batch(step)
    n = cfg.concat_segments
    if n == 1:
        return task.sample(cfg.batch_size, cfg.seq_len, step_seed(cfg.seed, step))
    base = cfg.seq_len // n
    lens = [base] * (n - 1) + [cfg.seq_len - base * (n - 1)]
    return TaskBatch.concat_time([task.sample(cfg.batch_size, m, step_seed(cfg.seed, step, j))
                                  for j, m in enumerate(lens)])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only (not norms, biases, 1-d SSM parameters); tied weights counted once."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class _Logger:
    """``metrics.jsonl`` (main rank), cut back to ``step`` on resume so the log equals an
    uninterrupted run's."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        self.dropped = 0  # unreadable lines left out on resume (e.g. a line cut by kill -9)
        if not enabled:
            return
        if resume_step is not None and path.is_file():
            kept = []
            for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    record = None
                    self.dropped += 1
                if isinstance(record, dict):
                    kept.append(record)
            kept = [r for r in kept if isinstance(r.get("step", 0), int) and r.get("step", 0) <= resume_step]
            ckpt.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
            self.records = kept
        elif path.exists():
            path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled,
                        transient=False)
    task_id = progress.add_task("train", total=total, completed=start, info="")
    return progress, task_id


def train(cfg: TrainConfig, spec: Mapping[str, Any] | None, run: str | Path, *, resume: bool = False,
          model_factory: ModelFactory | None = None, progress: bool = True, stop_after: int | None = None,
          env: DistEnv | None = None, log: Callable[[str], None] | None = None,
          resume_steps: int | None = None, time_limit: float | None = None, fit_to_time: bool = False,
          profile: ProfileWindow | None = None) -> TrainResult:
    """Train a model built from ``spec`` on ``cfg.task``; write checkpoints and metrics under ``run``.

    Args:
        cfg: the training configuration (on resume the checkpoint's configuration is used instead).
        spec: the layout (canonical or raw); on resume ``None`` = the checkpoint's.
        run: run directory.
        resume: continue from the newest intact checkpoint (an unusable newer one is set aside, saying
            so); :class:`NoCheckpointError` when there is none (never a silent fresh start).
        model_factory: ``spec -> model`` (default :meth:`HSALanguageModel.from_spec`).
        progress: show the rich progress bar (main rank).
        stop_after: stop (as if killed) after this many optimizer steps in total, without a final
            checkpoint (tests of resume).
        env: a distributed environment (default: from ``torchrun``'s variables).
        log: receives one-line messages (default: print on the main rank).
        resume_steps: on resume, the new total number of steps (extends a run; note that the cosine
            schedule follows the new total from then on); ``None`` keeps the checkpoint's.
        time_limit: wall-clock seconds (from the call) after which training stops at the end of the
            current step, writes a checkpoint there and publishes its weights as ``run/model``, like
            Lightning's ``max_time``: the schedule is *not* shortened, so ``--resume`` later continues
            the same run to ``cfg.steps``. All ranks stop at the same step (rank 0's clock decides).
            With ``cfg.eval_every`` set, the stop step is evaluated like a last step (after the limit).
        fit_to_time: with ``time_limit``, shorten the run so that its schedule ends at the limit: once
            the warm-up is done (and at least 3 steps of this call are timed, the first excluded as it
            compiles), the step count becomes ``min(cfg.steps, steps done + 95% of the steps that fit
            the time left at the rate measured since the first step)``. ``cfg.steps`` is then an upper
            bound; the fitted count is saved with the run (``train_config.json``, checkpoints), so a
            resume keeps it. A fine-tune of a few minutes whose speed is not known in advance then
            ends its cosine decay instead of being cut off with the learning rate still high.
        profile: profile these steps (:mod:`.profiling`; files under ``run/profile``).

    Returns:
        :class:`TrainResult` (main rank's view; other ranks get the same losses).
    """
    t_start = time.perf_counter()
    run = Path(run)
    own_env = env is None
    env = env or init_distributed(cfg.device)
    say = log or (lambda m: print(m, flush=True) if env.is_main else None)
    factory = model_factory or default_model_factory
    if fit_to_time and time_limit is None:
        raise ValueError("fit_to_time needs a time_limit (the time the schedule is fitted to)")
    try:
        trainer = _Trainer.setup(cfg, spec, run, resume=resume, factory=factory, env=env, say=say, t_start=t_start,
                                 resume_steps=resume_steps)
        return trainer.fit(show_progress=progress, stop_after=stop_after, time_limit=time_limit,
                           fit_to_time=fit_to_time, profile=profile)
    finally:
        if own_env:
            shutdown(env)


@dataclass
class _RunState:
    """What a run carries from step to step (and its checkpoints save): the step count, the tokens seen,
    the carried mixer states with their batch counter, and the last loss."""

    step: int = 0
    tokens: int = 0
    carry_count: int = 0
    carried: list[Any] | None = None
    last_loss: float = float("nan")


@dataclass
class _StepResult:
    """One optimizer step's figures (global over ranks)."""

    loss: float
    correct: float
    has_answers: bool
    lr: float
    grad_norm: float


@dataclass
class _PendingStep:
    """One optimizer step's figures still on the device (global sums over ranks, 0-d tensors)."""

    loss_sum: Tensor
    n_tok: Tensor
    correct: Tensor
    grad_norm: Tensor
    has_answers: bool
    lr: float

    def resolve(self) -> _StepResult:
        """The figures on the host: one transfer, which waits for the step to finish."""
        device = self.loss_sum.device
        loss_sum, n_tok, correct, grad_norm = torch.stack(
            [_local(t).detach().float().reshape(()).to(device)
             for t in (self.loss_sum, self.n_tok, self.correct, self.grad_norm)]
        ).tolist()
        return _StepResult(loss_sum / n_tok, correct, self.has_answers, self.lr, grad_norm)


def _local(t: Tensor) -> Tensor:
    """A plain tensor from a DTensor (FSDP2's clipped gradient norm is one); other tensors as they are."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


class _Trainer:
    """One call of :func:`train`, one job per method: :meth:`setup` (checkpoint to resume, model, task,
    optimizer, wrapping, log), :meth:`step` (one optimizer step), :meth:`evaluate` (the periodic
    evaluation), :meth:`save` (an atomic checkpoint), :meth:`finish` (publish ``RUN/model``); :meth:`fit`
    is the loop that calls them."""

    def __init__(self, cfg: TrainConfig, run: Path, env: DistEnv, say: Callable[[str], None], t_start: float,
                 model: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer, task: Task,
                 logger: _Logger, state: _RunState) -> None:
        self.cfg, self.run, self.env, self.say, self.t_start = cfg, run, env, say, t_start
        self.model, self.wrapped, self.optimizer, self.task = model, wrapped, optimizer, task
        self.logger, self.state = logger, state
        self.amp = _autocast_dtype(cfg, env.device)
        self.local = slice(env.rank * cfg.batch_size // env.world_size,
                           (env.rank + 1) * cfg.batch_size // env.world_size)
        self.eval_result: dict[str, Any] | None = None
        self._window_t, self._window_tokens = time.perf_counter(), 0

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup(cls, cfg: TrainConfig, spec: Mapping[str, Any] | None, run: Path, *, resume: bool,
              factory: ModelFactory, env: DistEnv, say: Callable[[str], None], t_start: float,
              resume_steps: int | None) -> _Trainer:
        """Everything the loop needs, from a fresh start or from the newest intact checkpoint."""
        resumed = _resume_point(run, resume, env, say)
        if resumed is not None:
            cfg = TrainConfig.from_dict(resumed.trainer["config"])
            if resume_steps is not None:  # the only setting a resume may change (to extend a run)
                cfg.steps = resume_steps
            spec = resumed.spec
            say(f"resuming {run} from {resumed.path.name} (step {resumed.trainer['step']})")
        if spec is None:
            raise ValueError("no spec given and no checkpoint to resume from")
        if cfg.batch_size % env.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {env.world_size} ranks")
        model, spec = _build_model(cfg, spec, factory, env.device, say, fresh=resumed is None)
        if cfg.data:  # a language model on prepared text instead of a synthetic task
            from .text_data import text_data_for

            task: Task = text_data_for(cfg, spec, run, env.is_main)  # sets cfg.task = "text"
        else:
            task = task_for_spec(cfg, spec)
        if cfg.seq_len < task.min_length():
            raise ValueError(f"--seq-len {cfg.seq_len} is shorter than task '{cfg.task}' needs "
                             f"({task.min_length()})")
        optimizer = _adamw(model, cfg, fused=env.device.type == "cuda")
        state = _restore(resumed, model, optimizer, env.device) if resumed is not None else _RunState()
        wrapped, optimizer = _wrap(model, optimizer, cfg, env, resumed)
        if resumed is not None:  # loaded into the model and optimizer: free the host copies
            resumed.weights, resumed.optimizer, resumed.per_rank = {}, None, {}
        logger = _Logger(run / "metrics.jsonl", env.is_main, state.step if resumed is not None else None)
        if logger.dropped:
            say(f"metrics.jsonl: left out {logger.dropped} unreadable line(s)")
        trainer = cls(cfg, run, env, say, t_start, model, wrapped, optimizer, task, logger, state)
        trainer._announce()
        # The run's last loss so far: what a resume with nothing left to do reports.
        state.last_loss = next((float(r["loss"]) for r in reversed(logger.records) if "loss" in r), float("nan"))
        return trainer

    def _write_train_config(self) -> None:
        """``RUN/train_config.json``: the configuration as it stands (main rank)."""
        if not self.env.is_main:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        ckpt.write_text_atomic(self.run / "train_config.json", json.dumps(
            {"config": self.cfg.to_dict(), "task_options": dict(self.task.options),
             "world_size": self.env.world_size}, indent=2))

    def _announce(self) -> None:
        """``RUN/train_config.json`` and the one-line summary of the run (main rank)."""
        cfg, env = self.cfg, self.env
        self._write_train_config()
        if not env.is_main:
            return
        n_params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        self.say(f"model: {n_params / 1e6:.2f}M parameters on {env.device}"
                 f"{' (bf16 autocast)' if self.amp else ''}; task {cfg.task} {self.task.options}; "
                 f"{cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens; world size {env.world_size}")

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, show_progress: bool, stop_after: int | None, time_limit: float | None,
            fit_to_time: bool = False, profile: ProfileWindow | None = None) -> TrainResult:
        """Steps ``state.step + 1 .. cfg.steps`` (or ``stop_after``), evaluating, saving and stopping on
        time as configured (and fitting the step count to the time limit, see :func:`train`), and
        profiling the ``profile`` window."""
        cfg, state = self.cfg, self.state
        start_step = state.step
        progress, pid = _progress(show_progress and self.env.is_main, cfg.steps, start_step)
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        # the step after which the count is fitted: warm-up done, 3 steps of this call at least
        fit_at = max(cfg.warmup, start_step + 3) if fit_to_time else None
        first_done_at = 0.0
        self._window_t, self._window_tokens = time.perf_counter(), 0
        set_up = self._window_t - self.t_start
        self.wrapped.train()
        with progress:
            batch = self.device_batch(start_step) if start_step < end else None
            profiler = (StepProfiler(profile, self.run / "profile", self.env.rank, self.env.device)
                        if profile is not None else None)
            for step in range(start_step, end):
                if profiler is not None:
                    profiler.before_step(step)
                pending = self.step(step, batch)
                # The host prepares the next batch while the GPU still runs this step (nothing above
                # waited for it), and only then reads this step's figures: one sync per step.
                batch = self.device_batch(step + 1) if step + 1 < end else None
                result = pending.resolve()
                self.state.last_loss = result.loss
                done = step + 1
                if profiler is not None and (written := profiler.after_step(done)) is not None:
                    self.say(f"profile of steps {profiler.window.after + 1}-{done}: {written} (trace beside it)")
                now = time.perf_counter()
                tps = self._log_step(result, done, end, now)
                if fit_at is not None and time_limit is not None and done == fit_at and done < end:
                    cfg.steps = self._fitted_steps(done, now, time_limit, first_done_at, start_step)
                    self._write_train_config()  # with the fitted count
                    end = min(end, cfg.steps)
                    progress.update(pid, total=cfg.steps)
                if done == start_step + 1:
                    first_done_at = now
                    # Where a short run's time goes: a fine-tune of a few minutes can spend a fifth of
                    # them before its first step ends (set-up, then compiling and tuning kernels).
                    self.say(f"first step done {now - self.t_start:.1f}s after the start: {set_up:.1f}s of "
                             f"set-up (model, data, checkpoint), {now - self.t_start - set_up:.1f}s for the "
                             "step (the first compiles and tunes the kernels)")
                progress.update(pid, completed=done,
                                info=f"loss {result.loss:.4f}"
                                     f"{f' acc {result.correct:.2f}' if result.has_answers else ''} {tps:,.0f} tok/s "
                                     f"lr {result.lr:.2e}")
                out_of_time = (time_limit is not None and done < end
                               and _agree(now - self.t_start >= time_limit, self.env))
                # A run stopped on time ends at this step and publishes its weights: it is evaluated
                # here like a finished one (after the limit: the evaluation trains nothing).
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps or out_of_time):
                    self.evaluate(done)
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps or out_of_time:
                    self.save()
                if out_of_time:
                    self.logger.log({"step": done, "stopped": "time_limit", "time_limit": time_limit,
                                     "time": round(now - self.t_start, 3)})
                    self.say(f"time limit of {time_limit:g}s reached: stopped after step {done} of {cfg.steps} "
                             f"(checkpoint written; --resume continues)")
                    end = done
                    break
                if done >= end:  # the step count was fitted to the time limit (the range above was not)
                    break
            if profiler is not None and (written := profiler.close()) is not None:  # the run ended inside the window
                self.say(f"profile up to step {end}: {written} (trace beside it)")
        return self.finish(end, start_step, publish=end == cfg.steps or time_limit is not None)

    def _fitted_steps(self, done: int, now: float, time_limit: float, first_done_at: float, start_step: int) -> int:
        """The step count that ends the schedule at ``time_limit`` (rank 0's measurement on every rank),
        recorded in the metrics and ``train_config.json``."""
        cfg = self.cfg
        rate = (done - start_step - 1) / max(1e-9, now - first_done_at)  # steps/s after the compiling first
        left = time_limit - (now - self.t_start)
        fitted = int(_rank0_value(min(cfg.steps, done + max(1, int(0.95 * left * rate))), self.env))
        self.logger.log({"step": done, "fitted_steps": fitted, "steps_per_s": round(rate, 4),
                         "time_left": round(left, 3)})
        self.say(f"step {done}: {rate:.2f} steps/s with {left:.0f}s left of --time-limit: the schedule now "
                 f"ends at step {fitted} (was {cfg.steps})")
        return fitted

    def device_batch(self, step: int) -> TaskBatch:
        """This rank's share of the global batch of ``step`` on the training device (on CUDA through
        page-locked memory and an asynchronous copy, so that preparing it never waits for the GPU)."""
        batch = global_batch(self.task, self.cfg, step).select(self.local)
        if self.env.device.type != "cuda":
            return batch.to(self.env.device)
        return batch.pin_memory().to(self.env.device, non_blocking=True)

    def step(self, step: int, batch: TaskBatch) -> _PendingStep:
        """Optimizer step ``step + 1`` on ``batch`` (:meth:`device_batch`): forward (with the carried
        states when configured), loss over the global batch, backward, clipping, AdamW. Nothing here
        waits for the device: the figures come back as tensors, read by :meth:`_PendingStep.resolve`."""
        cfg, env, state, optimizer = self.cfg, self.env, self.state, self.optimizer
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        init_states = None
        if cfg.carry_state:
            # memory reset: every memory_reset_every batches the carried state is replaced by zeros
            carried = state.carried
            init_states = carried if (carried is not None and state.carry_count % cfg.memory_reset_every) else None
        loss_mask = batch.loss_mask(cfg.loss_on)
        with _autocast(env.device, self.amp):
            step_loss, answer_logits, final_states = self.wrapped(
                batch.input_ids, init_states, return_states=cfg.carry_state, targets=batch.targets,
                loss_mask=loss_mask, answer_positions=batch.answer_positions,
                mask_is_answers=cfg.loss_on == "answer" and batch.answer_positions.shape[1] > 0)
        if cfg.carry_state:
            state.carried = detach_states(final_states)
            state.carry_count += 1
        loss, loss_sum, n_tok, correct = _loss(step_loss, answer_logits, batch, loss_mask, env)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip(self.wrapped, cfg.grad_clip)
        optimizer.step()
        state.step = step + 1
        state.tokens += cfg.batch_size * cfg.seq_len
        # language-model batches have no answer positions: no exact-match figure for them
        return _PendingStep(loss_sum, n_tok, correct, grad_norm, bool(batch.answer_positions.shape[1]), lr)

    def _log_step(self, result: _StepResult, done: int, end: int, now: float) -> float:
        """The metrics record of step ``done`` (every ``log_every`` steps and the last); returns tokens/s
        since the previous record."""
        cfg = self.cfg
        self._window_tokens += cfg.batch_size * cfg.seq_len
        tps = self._window_tokens / max(1e-9, now - self._window_t)
        acc = {"acc": result.correct} if result.has_answers else {}
        if done % cfg.log_every == 0 or done == end:
            self.logger.log({"step": done, "loss": result.loss, **acc, "lr": result.lr,
                             "grad_norm": result.grad_norm, "tokens": self.state.tokens,
                             "tokens_per_s": round(tps, 1), "time": round(now - self.t_start, 3),
                             **(self.task.log_fields(done) if hasattr(self.task, "log_fields") else {})})
            self._window_t, self._window_tokens = now, 0
        return tps

    def evaluate(self, done: int) -> dict[str, float]:
        """The periodic evaluation after step ``done``: logged, said, and kept for the result."""
        res = _periodic_eval(self.wrapped, self.task, self.cfg, self.env, self.amp)
        self.eval_result = res
        self.logger.log({"step": done, "eval": res})
        self.say(f"step {done}: eval {'' if self.cfg.data else 'exact-match '}"
                 + ", ".join(f"{k}: {v:.3f}" for k, v in res.items()))
        return res

    def save(self) -> None:
        """An atomic checkpoint of the current step (every rank takes part)."""
        s = self.state
        _save(self.run, self.model, self.wrapped, self.optimizer, self.cfg, self.env, s.step, s.tokens,
              s.carry_count, s.carried)

    def finish(self, end: int, start_step: int, *, publish: bool) -> TrainResult:
        """Publish the newest checkpoint's model as ``RUN/model`` (when the run ended or stopped on time)
        and wait for every rank."""
        if publish and self.env.is_main:
            final = ckpt.latest_checkpoint(self.run)
            if final is not None:
                _publish_final(self.run, final)
        barrier(self.env)
        return TrainResult(self.run, max(end, start_step), self.state.last_loss, self.logger.records,
                           time.perf_counter() - self.t_start, self.eval_result, start_step=start_step,
                           total_steps=self.cfg.steps)


def _resume_point(run: Path, resume: bool, env: DistEnv, say: Callable[[str], None]) -> _Resumed | None:
    """The checkpoint to resume from (``None``: a fresh run); refuses a fresh start over checkpoints and a
    resume without one."""
    candidates = ckpt.complete_checkpoints(run)
    if candidates and not resume:
        raise RunExistsError(f"{run} already has checkpoints ({candidates[0].name}); pass --resume to continue "
                             f"or choose another --out")
    if resume and not candidates:
        # Never a silent fresh start: it would overwrite the run's metrics.jsonl and model/.
        raise NoCheckpointError(f"--resume: {run} has no complete checkpoint to resume from; run without "
                                f"--resume to start a new run there")
    return _load_newest_intact(run, candidates, env, say) if candidates else None


def _build_model(cfg: TrainConfig, spec: Mapping[str, Any], factory: ModelFactory, device: torch.device,
                 say: Callable[[str], None], *, fresh: bool) -> tuple[nn.Module, Mapping[str, Any]]:
    """The model on ``device`` (same initial weights on every rank and every run), activation
    checkpointing switched on when asked, ``--init-from`` weights on a fresh run; and its spec."""
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every run
    model = factory(spec).to(device)
    if cfg.checkpoint_activations:
        if not hasattr(model, "gradient_checkpointing"):
            raise ValueError("checkpoint_activations needs a model with a 'gradient_checkpointing' switch")
        model.gradient_checkpointing = True
    spec = getattr(model, "spec", spec)
    if cfg.freeze:
        frozen = freeze_parameters(model, cfg.freeze)
        say(f"frozen: {frozen:,} parameters matching {', '.join(cfg.freeze)}")
    if cfg.init_from and fresh:
        from ..runtime.checkpoint import model_dir_of

        _load_weights(model, model_dir_of(cfg.init_from), device)
        say(f"initialised from {model_dir_of(cfg.init_from)}")
    return model, spec


def freeze_parameters(model: nn.Module, patterns: list[str]) -> int:
    """Stop training the parameters whose names match any of ``patterns`` (``re.search``); returns how
    many values were frozen (a tied weight once).

    Raises:
        ValueError: a pattern that matches no parameter (naming some that exist), or patterns that
            freeze every parameter.
    """
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(re.search(pattern, name) for name in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ValueError(f"freeze: {pattern!r} matches no parameter of the model (its parameters: {shown})")
    frozen, trainable = 0, 0
    for name, p in model.named_parameters():  # tied weights appear once
        if any(re.search(pattern, name) for pattern in patterns):
            p.requires_grad_(False)
            frozen += p.numel()
        else:
            trainable += p.numel()
    if trainable == 0:
        raise ValueError(f"freeze: {', '.join(patterns)} freeze every parameter: nothing left to train")
    return frozen


def _adamw(model: nn.Module, cfg: TrainConfig, **kwargs: Any) -> torch.optim.Optimizer:
    # fused=True on CUDA (one kernel over all parameters, also for FSDP2's sharded ones), as
    # hsa bench model times it; the CPU keeps the reference (for-loop) implementation.
    return torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             **kwargs)


def _restore(resumed: _Resumed, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device) -> _RunState:
    """Weights, optimizer state, RNG states and carried states from a checkpoint; the step it was at."""
    model.load_state_dict(resumed.weights)
    try:
        optimizer.load_state_dict(resumed.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InvalidFileError(f"{resumed.path}: the optimizer state does not fit the model ({exc})") from None
    state = resumed.trainer
    ckpt.set_rng_state(resumed.per_rank["rng"], device)
    return _RunState(step=int(state["step"]), tokens=int(state["tokens"]),
                     carry_count=int(state.get("carry_count", 0)),
                     carried=_to_device(resumed.per_rank.get("carried"), device))


def _wrap(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, env: DistEnv,
          resumed: _Resumed | None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The training module (state resets, optional ``torch.compile``, DDP or FSDP2) and the optimizer
    over its parameters (rebuilt over FSDP2's sharded parameters, with the checkpoint's state)."""
    forward = SegmentedForward(model, cfg.state_reset_every)
    if cfg.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    param_dtype = torch.bfloat16 if cfg.fsdp_param_dtype == "bf16" else None
    wrapped = wrap_model(forward, env, fsdp=cfg.fsdp, find_unused_parameters=cfg.find_unused_parameters,
                         param_dtype=param_dtype, reshard_after_forward=cfg.fsdp_reshard,
                         blocks_per_unit=cfg.fsdp_blocks_per_unit, prefetch=cfg.fsdp_prefetch)
    if cfg.fsdp and env.distributed:
        # FSDP2 reshards parameters on wrapping; rebuild the optimizer over the sharded parameters and
        # load the full optimizer state into it.
        optimizer = _adamw(model, cfg, fused=env.device.type == "cuda")
        if resumed is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(wrapped, optimizer, resumed.optimizer,
                                     options=StateDictOptions(full_state_dict=True))
    return wrapped, optimizer


@dataclass
class _Resumed:
    """Everything read from one checkpoint, validated before the model is touched."""

    path: Path
    trainer: dict[str, Any]
    spec: dict[str, Any]
    weights: dict[str, Tensor]
    optimizer: Any
    per_rank: dict[str, Any]


def _read_checkpoint(path: Path, rank: int) -> _Resumed:
    """Read and check one checkpoint completely (JSON and safetensors only; no pickle).

    Raises:
        InvalidFileError / SpecError / OSError: anything missing, corrupt or inconsistent.
    """
    from hsa_core.io import read_config
    from hsa_core.model import load_pretrained

    trainer = ckpt.read_trainer_state(path)
    TrainConfig.from_dict(trainer["config"])
    spec = read_config(path / "model")
    weights = load_pretrained(path / "model").state_dict()  # checks the file and every shape
    optimizer = ckpt.load_tree(path, "optimizer")
    if not isinstance(optimizer, dict):
        raise InvalidFileError(f"{path}: the optimizer state is not a mapping")
    per_rank = ckpt.load_tree(path, f"rank_{rank:05d}")
    if not isinstance(per_rank, dict) or not isinstance(per_rank.get("rng"), dict):
        raise InvalidFileError(f"{path}: rank_{rank:05d} has no RNG state")
    return _Resumed(path, trainer, spec, weights, optimizer, per_rank)


def _load_newest_intact(run: Path, candidates: list[Path], env: DistEnv, say: Callable[[str], None]) -> _Resumed:
    """The newest checkpoint every rank can read; unusable newer ones are set aside, saying so.

    Raises:
        InvalidFileError: no checkpoint is intact (each one's problem is listed).
    """
    from hsa_core.errors import HSAError

    problems: list[str] = []
    for i, path in enumerate(candidates):
        loaded: _Resumed | None = None
        problem = ""
        try:
            loaded = _read_checkpoint(path, env.rank)
        except (HSAError, OSError, ValueError, KeyError, TypeError) as exc:
            problem = str(exc)
        if env.distributed:  # every rank must resume from the same step
            bad = torch.tensor([0.0 if loaded is not None else 1.0], device=env.device)
            if all_reduce_sum(bad, env).item() > 0 and loaded is not None:
                loaded, problem = None, "unreadable on another rank"
        if loaded is not None:
            if problems and env.is_main:
                for older in candidates[:i]:
                    moved = ckpt.set_aside(older) if older.exists() else older
                    say(f"set aside unusable checkpoint {older.name} as {moved.name}")
            return loaded
        problems.append(f"{path.name}: {problem}")
        nxt = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "no older checkpoint"
        say(f"checkpoint {path.name} is unusable ({problem}); {nxt}")
        barrier(env)
    raise InvalidFileError(f"{run}: no intact checkpoint to resume from: " + "; ".join(problems))


def _to_device(obj: Any, device: torch.device) -> Any:
    """Carried states (lists of dicts of tensors) moved to the training device."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _rank0_value(value: float, env: DistEnv) -> float:
    """Rank 0's ``value`` on every rank (a sum over ranks where only rank 0 contributes)."""
    if not env.distributed:
        return value
    t = torch.tensor([float(value) if env.is_main else 0.0], device=env.device)
    return float(all_reduce_sum(t, env).item())


def _agree(flag: bool, env: DistEnv) -> bool:
    """Rank 0's ``flag`` on every rank (clocks differ between ranks; all must stop at the same step)."""
    return _rank0_value(1.0 if flag else 0.0, env) > 0


def _autocast(device: torch.device, amp: torch.dtype | None):
    import contextlib

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def _loss(loss_sum: Tensor, answer_logits: Tensor, batch: TaskBatch, loss_mask: Tensor,
          env: DistEnv) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The cross-entropy over the loss positions ``loss_mask`` ``(B, T)`` of the *global* batch, from this
    rank's summed loss.

    Returns ``(loss for backward, global loss sum, global token count, global answer exact-match rate)``.
    Each rank divides its local sum by the global token count and multiplies by the world size,
    because DDP averages gradients over ranks: the resulting gradient is exactly that of the
    global-batch mean, whatever the split.
    """
    with torch.no_grad():
        exact = (answer_logits.argmax(-1) == batch.answers()).all(1).float().sum()
        # new_full is a fill kernel; torch.tensor(..., device=cuda) would copy from pageable memory and
        # wait for the queued forward
        stats = torch.stack([loss_sum.detach().float(), loss_mask.sum().float(), exact,
                             loss_sum.new_full((), float(batch.batch_size), dtype=torch.float32)])
        stats = all_reduce_sum(stats, env)
    loss = loss_sum / stats[1] * env.world_size
    return loss, stats[0], stats[1], stats[2] / stats[3]


def _clip(module: nn.Module, max_norm: float) -> Tensor:
    params = [p for p in module.parameters() if p.grad is not None]
    if max_norm and max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [p.grad.detach().float().norm() for p in params]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)


def _periodic_eval(wrapped: nn.Module, task: Task, cfg: TrainConfig, env: DistEnv,
                   amp: torch.dtype | None) -> dict[str, float]:
    from ..evaluation.core import evaluate

    if hasattr(task, "periodic_eval"):  # language-model data: validation loss (hsa_app.training.text_data)
        return task.periodic_eval(wrapped, env, amp)
    lengths = cfg.eval_lengths or [cfg.seq_len]
    device = env.device
    reduce = (lambda t: all_reduce_sum(t.to(device), env).cpu()) if env.distributed else None
    # Through the wrapper, so that FSDP2's hooks gather the sharded parameters.
    res = evaluate(_EvalAdapter(wrapped), task, lengths, [None], samples=cfg.eval_samples, seed=cfg.seed + 10_000,
                   segment_len=cfg.eval_segment_len, device=device, autocast_dtype=amp,
                   rank=env.rank, world_size=env.world_size, reduce=reduce)
    return {f"acc@{n}": a for n, a in res.by_length().items()}


def _full_state(model: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer,
                cfg: TrainConfig, env: DistEnv) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """Unsharded model and optimizer state (FSDP2 gathers; otherwise the module's own)."""
    if cfg.fsdp and env.distributed:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(wrapped, options=opts)
        osd = get_optimizer_state_dict(wrapped, optimizer, options=opts)
        # keys are prefixed by the SegmentedForward wrapper
        return {k.removeprefix("model."): v for k, v in msd.items()}, osd
    return None, optimizer.state_dict()


def _save(run: Path, model: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
          env: DistEnv, step: int, tokens: int, carry_count: int, carried: Any) -> None:
    msd, osd = _full_state(model, wrapped, optimizer, cfg, env)
    tmp_name = None
    if env.is_main:
        tmp = ckpt.begin(run, step)
        tmp_name = tmp.name
        _write_model(model, msd, tmp / "model")
        ckpt.save_tree(osd, tmp, "optimizer")  # no pickle: safetensors + JSON
        (tmp / "trainer.json").write_text(json.dumps(
            {"step": step, "tokens": tokens, "carry_count": carry_count, "config": cfg.to_dict(),
             "world_size": env.world_size, "format": ckpt.FORMAT}, indent=2))
    if env.distributed:
        import torch.distributed as dist

        box = [tmp_name]
        dist.broadcast_object_list(box, src=0)
        tmp_name = box[0]
    tmp = run / "checkpoints" / str(tmp_name)
    ckpt.save_tree({"rng": ckpt.rng_state(env.device), "carried": carried}, tmp, f"rank_{env.rank:05d}")
    barrier(env)
    if env.is_main:
        ckpt.commit(run, tmp, step, cfg.keep_checkpoints)
    barrier(env)


def _write_model(model: nn.Module, full_state: dict[str, Tensor] | None, directory: Path) -> None:
    """Write a loadable model directory (``save_pretrained`` when the model has it)."""
    if full_state is not None:
        from hsa_core.model import HSALanguageModel

        shell = HSALanguageModel.from_spec(model.spec, device="cpu")
        shell.load_state_dict(full_state, strict=False)
        model = shell
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
        return
    from safetensors.torch import save_model

    directory.mkdir(parents=True)
    save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(getattr(model, "spec", {}), indent=2))


def _load_weights(model: nn.Module, directory: Path, device: torch.device) -> None:
    from safetensors.torch import load_model

    if hasattr(model, "save_pretrained"):
        loaded = type(model).from_pretrained(directory, device=device)
        model.load_state_dict(loaded.state_dict())
        return
    load_model(model, str(directory / "model.safetensors"), device=str(device))


def _publish_final(run: Path, final: Path) -> None:
    """Copy the last checkpoint's model to ``RUN/model`` (write beside, then swap in)."""
    import os
    import shutil

    target = run / "model"
    tmp = run / f".model.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(final / "model", tmp)
    ckpt.fsync_tree(tmp)
    if target.exists():
        old = run / f".model.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``."""
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run: str | Path) -> list[float]:
    """Per-step training losses of a run (the curve resume must reproduce)."""
    return [r["loss"] for r in read_metrics(run) if "loss" in r]


__all__ = ["NoCheckpointError", "RunExistsError", "TrainConfig", "TrainResult", "lr_at", "read_metrics", "train",
           "train_losses"]
