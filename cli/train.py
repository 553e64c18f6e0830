"""``hsa train SPEC --task passkey --seq-len 512 --steps N --out RUN``: train on a synthetic task;
``hsa train SPEC --data DIR ...``: train a language model on text prepared by ``hsa data prepare``.

Multi-GPU: launch the same command under ``torchrun --nproc-per-node N -m hsa_cli ...`` (or
``torchrun ... $(which hsa) train ...``); the process group is set up from torchrun's environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from hsa_core.errors import HSAError, UsageError, truncate

from ._common import (
    EXIT_USAGE,
    PLUGIN_OPTION,
    SET_OPTION,
    build_model,
    check_writable,
    console,
    fail,
    guarded,
    load_plugins,
    load_spec_from,
)

TASK_OPTION = typer.Option(
    None, "--task-option", "-t", metavar="KEY=VALUE",
    help="Task option, e.g. key_len=5 or filler=random (repeatable; see `hsa list`).",
)


#: Options a resumed run may change (the rest is the run's configuration, saved in its checkpoints).
RESUME_MAY_CHANGE = ("steps", "device", "no_progress", "time_limit", "fit_to_time", "profile_steps", "plugin",
                     "out", "resume", "spec", "set_")
#: Command-line parameter -> TrainConfig field, where the names differ.
_FIELD_OF = {"task_option": "task_options", "compile_": "compile"}


def resume_conflicts(ctx: Any, cfg: Any, saved: dict[str, Any]) -> list[str]:
    """``--flag value (checkpoint: other)`` for each option given on this command line whose value
    differs from the run's saved configuration (``saved``: the checkpoint's ``config``)."""
    from dataclasses import fields

    names = {f.name for f in fields(cfg)}
    out = []
    for param in ctx.command.params:
        if param.name in RESUME_MAY_CHANGE or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if getattr(source, "name", None) != "COMMANDLINE":  # typer vendors click: compare by name
            continue
        field = _FIELD_OF.get(param.name, param.name)
        if field not in names or field not in saved:
            continue
        given, before = getattr(cfg, field), saved[field]
        if json.loads(json.dumps(given)) != before:
            flag = param.opts[0] if getattr(param, "opts", None) else param.name
            out.append(f"{flag} {truncate(json.dumps(given), 60)} (checkpoint: {truncate(json.dumps(before), 60)})")
    return out


def check_resume(ctx: Any, out: Path, cfg: Any, spec_dict: dict[str, Any]) -> None:
    """Refuse a ``--resume`` whose SPEC, ``--set`` or options differ from the run's checkpoint.

    Raises:
        UsageError: listing every difference (a resumed run keeps its layout and configuration).
    """
    from hsa_app.runtime import checkpoint as ckpt

    from hsa_core.io import first_difference

    saved_cfg, saved_spec = None, None
    for path in ckpt.complete_checkpoints(out):  # the newest readable one (the trainer checks the rest)
        try:
            saved_cfg = ckpt.read_trainer_state(path)["config"]
            from hsa_core.io import read_config

            saved_spec = read_config(path / "model")
            break
        except HSAError:
            continue
    if saved_cfg is None or saved_spec is None:
        return  # no checkpoint or none readable: the trainer says which
    conflicts = resume_conflicts(ctx, cfg, saved_cfg)
    where = first_difference(_without_provenance(spec_dict), _without_provenance(saved_spec))
    if where is not None:
        conflicts.insert(0, f"SPEC/--set (the layout differs from the checkpoint's at '{where}')")
    if conflicts:
        raise UsageError("--resume continues a run with its own layout and configuration (only --steps, "
                         "--time-limit, --fit-to-time, --profile-steps and --device may change), but these differ: "
                         + "; ".join(conflicts)
                         + "; drop them, or train into a new --out")


def _without_provenance(spec: dict[str, Any]) -> dict[str, Any]:
    """The layout without the informational ``plugin`` of each layer (a ``--plugin`` path may be
    spelled differently on another invocation)."""
    layers = [{k: v for k, v in layer.items() if k != "plugin"} if isinstance(layer, dict) else layer
              for layer in spec.get("layers", [])]
    return {**spec, "layers": layers}


@guarded
def train(
    ctx: typer.Context,
    spec: str = typer.Argument(..., help="Layout YAML file or preset name (e.g. ramba-cpu)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, metrics.jsonl, model/)."),
    task: str = typer.Option("passkey", "--task", help="Registered task name."),
    data: Path | None = typer.Option(
        None, "--data", help="Train a language model on this `hsa data prepare` folder instead of a task "
        "(model.vocab_size is set from its tokenizer unless --set gives it)."),
    packing: str = typer.Option(
        "concat", "--packing", help="With --data: concat (documents joined with EOS; state and chunk memory run "
        "across documents inside a sequence) or document (a sequence never crosses a document; padded)."),
    passkey_mix: float = typer.Option(
        0.0, "--passkey-mix", min=0.0, max=0.99, help="With --data: this fraction of the steps are passkey "
        "batches in natural-text filler (loss on the answer; --task-option digits=N, min_gap=N)."),
    task_option: list[str] | None = TASK_OPTION,
    seq_len: int = typer.Option(512, "--seq-len", min=8, help="Training sequence length (tokens)."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Optimizer steps (default 1000; on --resume: a new total, default unchanged)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Global batch (sequences per step)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine floor as a fraction of --lr."),
    warmup: int = typer.Option(50, "--warmup", min=0, help="Linear warm-up steps."),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Global gradient-norm clip (0 = off)."),
    loss_on: str = typer.Option("answer", "--loss-on", help="answer (answer tokens only) or all (every token)."),
    eval_every: int = typer.Option(0, "--eval-every", min=0,
                                   help="Exact-match eval every N steps and at the end (0 = off)."),
    eval_samples: int = typer.Option(32, "--eval-samples", min=1),
    eval_lengths: str | None = typer.Option(None, "--eval-lengths", help="Lengths for periodic eval, e.g. 512,2k."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", min=0, help="Checkpoint every N steps."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", min=1),
    state_reset_every: int | None = typer.Option(
        None, "--state-reset-every", min=1,
        help="RAMba: zero the backbone states every N tokens inside a sequence; chunk memory persists."),
    carry_state: bool = typer.Option(
        False, "--carry-state", help="RAMba: start each batch from the previous batch's final backbone state..."),
    memory_reset_every: int = typer.Option(64, "--memory-reset-every", min=1,
                                           help="...replaced by zeros every N batches."),
    concat_segments: int = typer.Option(1, "--concat-segments", min=1,
                                        help="RAMba: join N unrelated samples in one sequence."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16."),
    seed: int = typer.Option(0, "--seed"),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Start from the weights of this run or model directory (curriculum stage)."),
    freeze: list[str] | None = typer.Option(
        None, "--freeze", metavar="REGEX", help="Do not train the parameters whose names match this regular "
        "expression (repeatable; e.g. '^embedding' or 'memories\\..*\\.encoder' in a fine-tune)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="FSDP2 (fully_shard) instead of DDP under torchrun."),
    fsdp_param_dtype: str = typer.Option(
        "fp32", "--fsdp-param-dtype", help="FSDP2: fp32 (gather fp32 parameters; autocast casts them) or bf16 "
        "(gather and compute parameters in bf16, reduce gradients in fp32)."),
    fsdp_reshard: bool = typer.Option(
        True, "--fsdp-reshard/--no-fsdp-reshard", help="FSDP2: free each block's gathered parameters after its "
        "forward (least memory) or keep them for the backward (one all-gather fewer per step)."),
    fsdp_blocks_per_unit: int = typer.Option(
        1, "--fsdp-blocks-per-unit", min=1, help="FSDP2: consecutive blocks sharded as one unit (fewer, larger "
        "collectives and fewer hooks per step)."),
    fsdp_prefetch: int = typer.Option(
        0, "--fsdp-prefetch", min=0, help="FSDP2: 0 leaves the all-gathers to FSDP2; N makes each unit issue "
        "those of the next N units (previous N in backward) as soon as its own are done, ahead of the CPU "
        "reaching them (helps a host-bound step; more memory)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    checkpoint_activations: bool = typer.Option(False, "--checkpoint-activations",
                                                help="Recompute each block in backward (activation checkpointing): "
                                                "far less memory for long sequences, about a third more compute."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest intact checkpoint in --out (a corrupt newer one is set "
        "aside, saying so). Refused without a checkpoint, or when SPEC, --set or an option differs from the run's "
        "(only --steps, --time-limit, --fit-to-time, --profile-steps, --device may change)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs only)."),
    time_limit: float | None = typer.Option(
        None, "--time-limit", min=0, help="Stop after this many seconds of wall time: checkpoint, publish the "
        "model, evaluate it (with --eval-every), exit 0 (the schedule is not shortened; --resume continues)."),
    fit_to_time: bool = typer.Option(
        False, "--fit-to-time", help="With --time-limit: after the warm-up, shorten --steps to what fits the time "
        "left at the measured speed, so that the cosine schedule ends at the limit (--steps becomes an upper "
        "bound; the fitted count is saved with the run)."),
    profile_steps: str | None = typer.Option(
        None, "--profile-steps", metavar="A:B", help="Profile optimizer steps A+1..B with torch.profiler: a "
        "Chrome trace and an operator table per rank in OUT/profile (the table's first line says how much of "
        "the wall time the GPU's kernels filled)."),
    recipe: str | None = typer.Option(
        None, "--recipe", help="Training recipe (name or YAML) whose settings replace the defaults of the flags "
        "not given, e.g. ramba-paper (the RAMba paper's optimizer and training tricks)."),
    set_: list[str] | None = SET_OPTION,
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Train a layout on a synthetic long-context task, or a language model on text (--data); AdamW, warm-up +
    cosine, atomic checkpoints, exact resume."""
    from hsa_app.data.errors import DataError
    from hsa_app.evaluation import parse_lengths
    from hsa_app.tasks import parse_task_options
    from hsa_app.training import TrainConfig
    from hsa_app.training import train as run_training
    from hsa_app.training.profiling import ProfileWindow
    from hsa_app.training.trainer import RunExistsError

    load_plugins(plugin)
    overrides = list(set_ or [])
    if data is not None and not resume:
        from hsa_app.data import open_data

        from ._data import data_errors

        with data_errors():
            vocab = open_data(data, verify=False).vocab_size
        if not any(o.split("=", 1)[0].strip() == "model.vocab_size" for o in overrides):
            overrides.append(f"model.vocab_size={-(-vocab // 64) * 64}")  # the tokenizer's, padded to 64
    path, spec_dict = load_spec_from(spec, overrides)
    if not resume:
        # The checks of `hsa build`, on meta (free), and the size against the device's free memory.
        from hsa_core.devices import resolve_device
        from hsa_core.limits import check_fits

        meta = build_model(spec_dict, device="meta", source=path)
        check_fits(meta, resolve_device(device), what=f"model '{spec_dict.get('name')}'")
        del meta
    if fit_to_time and time_limit is None:
        fail("--fit-to-time needs --time-limit SECONDS (the time the schedule is fitted to)", EXIT_USAGE)
    check_writable(out)  # before any work: checkpoints and the model go there
    try:
        values = dict(
            task=task, task_options=parse_task_options(task_option), seq_len=seq_len, batch_size=batch_size,
            loss_on=loss_on, concat_segments=concat_segments, data=str(data.resolve()) if data else None,
            packing=packing, passkey_mix=passkey_mix, steps=steps or 1000, lr=lr, min_lr_ratio=min_lr_ratio,
            warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip, state_reset_every=state_reset_every,
            carry_state=carry_state, memory_reset_every=memory_reset_every, device=device, dtype=dtype, seed=seed,
            init_from=str(init_from) if init_from else None, freeze=list(freeze or []),
            eval_every=eval_every, eval_samples=eval_samples,
            eval_lengths=parse_lengths(eval_lengths) if eval_lengths else None,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, fsdp=fsdp, compile=compile_,
            fsdp_param_dtype=fsdp_param_dtype, fsdp_reshard=fsdp_reshard, fsdp_blocks_per_unit=fsdp_blocks_per_unit,
            fsdp_prefetch=fsdp_prefetch,
            checkpoint_activations=checkpoint_activations)
        if recipe is not None:
            values = _with_recipe(ctx, recipe, values)
        cfg = TrainConfig(**values)
        if recipe is not None and os.environ.get("RANK", "0") == "0":
            console().print(f"recipe {recipe}: " + ", ".join(
                f"{k} {getattr(cfg, k)}" for k in ("lr", "min_lr_ratio", "warmup", "weight_decay", "beta1", "beta2",
                                                  "state_reset_every", "carry_state", "memory_reset_every",
                                                  "concat_segments", "dtype")))
        if resume:
            check_resume(ctx, out, cfg, spec_dict)
        window = ProfileWindow.parse(profile_steps) if profile_steps is not None else None
        result = run_training(cfg, spec_dict, out, resume=resume, progress=not no_progress, resume_steps=steps,
                              time_limit=time_limit, fit_to_time=fit_to_time, profile=window)
    except DataError as exc:
        fail(str(exc), exc.exit_code)
    except RunExistsError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        fail(str(exc), EXIT_USAGE)
    if result is not None and os.environ.get("RANK", "0") == "0":
        total = result.total_steps if result.total_steps is not None else result.step
        done = result.step - result.start_step
        if done <= 0:
            what = f"nothing to train: {out} is already at step {result.step} of {total}"
        elif result.start_step:
            what = f"trained steps {result.start_step + 1}-{result.step} of {total} in {result.seconds:.1f}s"
        else:
            what = f"trained {done} steps{'' if result.step == total else f' of {total}'} in {result.seconds:.1f}s"
        console().print(f"{what}, final loss {result.final_loss:.4f}; "
                        f"model in {out / 'model'}, metrics in {out / 'metrics.jsonl'}")
        if result.eval:
            console().print(f"eval{'' if data else ' exact match'}: "
                            + ", ".join(f"{k} {v:.3f}" for k, v in result.eval.items()))



def _with_recipe(ctx: typer.Context, recipe: str, values: dict) -> dict:
    """The recipe's settings for every flag left at its default (flags given on the command line win)."""
    from hsa_app.recipes import RecipeError, apply_recipe, load_recipe

    try:
        settings = load_recipe(recipe)
    except RecipeError as exc:
        raise typer.BadParameter(str(exc), param_hint="--recipe") from None
    # By name: typer may bring its own copy of click's ParameterSource enum.
    sources = {name: ctx.get_parameter_source(name) for name in values}
    explicit = {name for name, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")}
    return apply_recipe(settings, values, explicit)
