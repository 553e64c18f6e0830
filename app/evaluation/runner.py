"""``hsa eval TASK RUN``: load a trained model, evaluate a depth x length grid, write the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hsa_core.errors import InvalidFileError

from ..runtime.checkpoint import model_dir_of
from .core import CellResult, EvalResult, PrefillProgress, evaluate


def task_options_for(run: Path, task: str, spec: dict[str, Any], overrides: dict[str, Any]) -> tuple[
        dict[str, Any], int | None]:
    """Task options: the training run's when it trained this task, then ``overrides``; the model's
    vocabulary and two chunks of gap otherwise. Also returns the training length when known."""
    from ..tasks import registry

    info = registry().get(task)
    opts: dict[str, Any] = {}
    train_len = None
    cfg_file = run / "train_config.json"
    if cfg_file.is_file():
        from ..runtime.checkpoint import read_json

        saved = read_json(cfg_file)
        config = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(config, dict) or not isinstance(saved.get("task_options", {}), dict):
            raise InvalidFileError(f"{cfg_file}: expected an object with 'config' and 'task_options'")
        train_len = config.get("seq_len")
        if config.get("task") == task:
            opts.update(saved.get("task_options", {}))
    opts.update(overrides)
    if "vocab_size" in info.defaults:
        opts.setdefault("vocab_size", spec["model"]["vocab_size"])
    if "min_gap" in info.defaults and opts.get("min_gap") is None:
        sizes = [m["chunk_size"] for m in spec.get("memories", {}).values()]
        opts["min_gap"] = 2 * min(sizes) if sizes else 128
    return opts, train_len


def eval_task_for(run: Path, task: str, spec: dict[str, Any], overrides: dict[str, Any],
                  filler: str | None = None) -> tuple[Any, int | None]:
    """The task ``hsa eval TASK RUN`` scores, and the run's training length when known: the synthetic
    ``task`` with :func:`task_options_for`'s options, or (``filler="text:DIR"``, passkey only) the
    passkey inside natural text from ``DIR``'s validation split in the run's tokenizer."""
    if filler is not None:
        return _text_task(run, task, filler, spec, overrides)
    from ..tasks import make_task

    opts, train_len = task_options_for(run, task, spec, overrides)
    return make_task(task, **opts), train_len


def run_eval(run: str | Path, task: str, lengths: list[int], depths: list[float | None], *, samples: int = 20,
             seed: int = 1234, segment_len: int = 4096, max_batch_tokens: int = 1 << 17, device: str = "auto",
             dtype: str = "auto", task_overrides: dict[str, Any] | None = None, out: str | Path | None = None,
             on_cell: Callable[[CellResult], None] | None = None,
             time_limit: float | None = None, filler: str | None = None,
             offload: bool | None = None,
             on_prefill: Callable[[PrefillProgress], None] | None = None) -> tuple[EvalResult, Path, Path]:
    """Evaluate the model of ``run`` and write ``eval_<task>.json`` and ``eval_<task>.png``.

    ``filler="text:DIR"`` (passkey only): the passkey inside natural text from the validation split
    of the prepared folder ``DIR``, in the run's tokenizer (:mod:`hsa_app.data.passkey`); the files
    are then ``eval_passkey_text.json``/``.png``. ``offload``: the chunk memories' K/V in host memory
    (``None``: as the model's layout says); ``meta["footprint"]`` reports memory and speed per length.
    The JSON is written after every cell too, with ``meta["partial"] = True`` until the grid is done,
    so a run cut short keeps the cells it finished.
    ``on_prefill``: progress within each prefill (:class:`~hsa_app.evaluation.core.PrefillProgress`).

    Returns:
        ``(result, json path, png path)``.
    """
    from hsa_core.model import HSALanguageModel
    from hsa_core.modules.offload import landmark_mode

    from ..runtime.distributed import resolve_device
    from .report import heatmap, write_json

    run = Path(run)
    mdir = model_dir_of(run)
    dev = resolve_device(device)
    amp = torch.bfloat16 if (dtype == "bf16" or (dtype == "auto" and dev.type == "cuda")) else None
    model = HSALanguageModel.from_pretrained(mdir, device=dev)
    offloaded = any(model.offloaded_memories(offload).values())  # also: offload=True without a memory fails here
    t, train_len = eval_task_for(run, task, model.spec, dict(task_overrides or {}), filler)
    too_short = [n for n in lengths if n < t.min_length()]
    if too_short:
        raise ValueError(f"lengths {too_short} are shorter than task '{task}' needs ({t.min_length()})")
    meta = {"model_dir": str(mdir), "train_seq_len": train_len, "samples_per_cell": samples, "seed": seed,
            "offload": offloaded, "offload_landmarks": landmark_mode() if offloaded else None,
            "segment_len": segment_len, "device": str(dev), "dtype": "bf16" if amp else "fp32",
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    out_dir = Path(out) if out is not None else run
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{task}_text" if filler is not None else task
    jpath = out_dir / f"eval_{name}.json"

    def keep(so_far: EvalResult) -> None:
        # Every finished cell is on disk at once (meta.partial: true until the end), with the footprint
        # of each length so far: a 64M cell takes minutes, and a run stopped by a time limit or a kill
        # keeps the cells it finished.
        partial = EvalResult(t.name, dict(t.options), sorted({c.length for c in so_far.cells}), list(depths),
                             list(so_far.cells), meta={**so_far.meta, **meta, "partial": True})
        write_json(partial, jpath)

    t0 = time.perf_counter()
    result = evaluate(model, t, lengths, depths, samples=samples, seed=seed, segment_len=segment_len,
                      max_batch_tokens=max_batch_tokens, device=dev, autocast_dtype=amp, on_cell=on_cell,
                      on_result=keep, time_limit=time_limit, offload=offload, on_prefill=on_prefill)
    result.meta = {**result.meta, **meta, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(result, jpath)
    ppath = heatmap(result, out_dir / f"eval_{name}.png")
    return result, jpath, ppath


def _text_task(run: Path, task: str, filler: str, spec: dict[str, Any], overrides: dict[str, Any]) -> tuple[
        Any, int | None]:
    """The natural-text passkey task for ``--filler text:DIR`` (checked against the run's tokenizer)."""
    from ..data.passkey import TextPasskeyTask
    from ..data.shards import open_data
    from ..data.tokenizer import check_tokenizer_match

    if not filler.startswith("text:") or len(filler) <= 5:
        raise ValueError(f"--filler {filler!r}: expected text:DIR (a folder made by `hsa data prepare`)")
    if task != "passkey":
        raise ValueError(f"--filler text:DIR works with the passkey task, not {task!r}")
    unknown = set(overrides) - {"digits", "min_gap", "seed"}
    if unknown:
        raise ValueError(f"passkey in text: unknown option(s) {', '.join(sorted(unknown))} (allowed: digits, "
                         f"min_gap, seed)")
    data = open_data(filler[5:])
    check_tokenizer_match(run, data)
    sizes = [m["chunk_size"] for m in spec.get("memories", {}).values()]
    min_gap = overrides.get("min_gap") or (2 * min(sizes) if sizes else 128)
    t = TextPasskeyTask(data.tokenizer(), data.split("validation"), digits=int(overrides.get("digits", 5)),
                        min_gap=int(min_gap), seed=int(overrides.get("seed", 0)), source=str(data.root))
    train_len = None
    cfg_file = run / "train_config.json"
    if cfg_file.is_file():
        from ..runtime.checkpoint import read_json

        saved = read_json(cfg_file)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise InvalidFileError(f"{cfg_file}: expected an object with 'config'")
        train_len = saved["config"].get("seq_len")
    return t, train_len
