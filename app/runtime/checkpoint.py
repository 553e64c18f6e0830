"""Atomic training checkpoints.

Layout of a run directory::

    RUN/
      metrics.jsonl                      one JSON record per logged step / evaluation
      checkpoints/
        step_000200/                     a complete checkpoint (never modified after the rename)
          model/                         config.yaml + config.json + model.safetensors (loadable)
          optimizer.safetensors + .json  AdamW state: its tensors, and the structure around them
          trainer.json                   step, tokens, training config, carried-state counter, format
          rank_00000.safetensors + .json per-rank RNG states and carried mixer states (same encoding)
          COMPLETE                       written last, before the rename
        latest                           name of the newest complete checkpoint (replaced atomically)
      model/                             final weights (``hsa eval RUN`` reads these)

A checkpoint is written into ``checkpoints/.tmp-step_N-<pid>/``, every file fsynced, then renamed to
``step_N`` and only then is ``latest`` switched (write-temp-then-``os.replace``). Older checkpoints are
deleted only after the new one is in place, so a crash at any instant leaves the previous checkpoint
intact and ``latest`` pointing at a complete directory. Nothing is ever overwritten in place.

No pickle, anywhere: a run directory is data, and loading it must never run code (``torch.load``
without ``weights_only=True`` would run whatever a crafted ``.pt`` file asks). Every nested state
(optimizer, RNGs, carried states) is written by :func:`save_tree` as a safetensors file of its
tensors plus a JSON file of the structure around them (dicts, lists, tuples, numbers, strings,
NumPy arrays), and read back by :func:`load_tree`, which accepts nothing else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from hsa_core.errors import InvalidFileError, truncate

COMPLETE = "COMPLETE"
LATEST = "latest"
#: Version of the checkpoint layout (1: pickled ``optimizer.pt``/``rank_*.pt``, no longer read).
FORMAT = 2
_T, _TUPLE, _MAP, _ND = "__tensor__", "__tuple__", "__map__", "__ndarray__"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories themselves (durable before the rename)."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a training step may draw from (Gumbel noise, dropout, Python/NumPy in plugins)."""
    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- pickle-free nested state ---------------------------------------------------------------------
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-ready copy of ``obj`` with each tensor replaced by a reference into ``tensors``."""
    import numpy as np

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        # A private, contiguous CPU copy: safetensors refuses shared storage and device tensors.
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {_T: key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "ui" else
                                                                          np.float64))
        return {_ND: key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {_MAP: [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} (no pickle: tensors, numbers, "
                    "strings, lists, tuples, dicts and NumPy arrays only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    import numpy as np

    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        raise InvalidFileError(f"{where}: unexpected {type(obj).__name__} in the structure")
    if _T in obj or _ND in obj:
        key = obj.get(_T, obj.get(_ND))
        if not isinstance(key, str) or key not in tensors:
            raise InvalidFileError(f"{where}: refers to tensor {truncate(repr(key), 40)}, which the "
                                   f"safetensors file does not have")
        if _T in obj:
            return tensors[key]
        try:
            return np.asarray(tensors[key].numpy(), dtype=np.dtype(str(obj.get("dtype"))))
        except TypeError as exc:
            raise InvalidFileError(f"{where}: bad array dtype ({exc})") from None
    if _TUPLE in obj:
        return tuple(_decode(v, tensors, where) for v in obj[_TUPLE])
    if _MAP in obj:
        pairs = obj[_MAP]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise InvalidFileError(f"{where}: a mapping must be a list of [key, value] pairs")
        out = {}
        for k, v in pairs:
            key = _decode(k, tensors, where)
            if isinstance(key, list | dict):
                raise InvalidFileError(f"{where}: a mapping key must be a number, string or tuple")
            out[key] = _decode(v, tensors, where)
        return out
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_tree(obj: Any, directory: Path, name: str) -> None:
    """Write ``obj`` (nested dicts/lists/tuples of tensors and plain values) as ``name.safetensors``
    (its tensors) + ``name.json`` (the structure). No pickle."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT, "tree": structure}))


def load_tree(directory: Path, name: str) -> Any:
    """Read what :func:`save_tree` wrote (tensors on CPU). Parses only JSON and safetensors.

    Raises:
        InvalidFileError: a missing, truncated or inconsistent file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spath, jpath = directory / f"{name}.safetensors", directory / f"{name}.json"
    for path in (spath, jpath):
        if not path.is_file():
            legacy = directory / f"{name}.pt"
            hint = (f" (it has {legacy.name}, the pickle format of older versions, which is never loaded because "
                    "unpickling can run code)") if legacy.exists() else ""
            raise InvalidFileError(f"{path} is missing{hint}")
    try:
        tensors = load_file(str(spath), device="cpu")
    except (SafetensorError, ValueError, OSError) as exc:
        raise InvalidFileError(f"{spath} is not a valid safetensors file ({truncate(str(exc), 160)})") from None
    data = read_json(jpath)
    if not isinstance(data, dict) or "tree" not in data:
        raise InvalidFileError(f"{jpath}: expected an object with a 'tree'")
    return _decode(data["tree"], tensors, str(jpath))


def read_json(path: Path) -> Any:
    """``json.loads`` of a file, any failure as :class:`InvalidFileError` naming the file."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InvalidFileError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidFileError(f"{path} is not valid JSON ({truncate(str(exc), 160)})") from None


def complete_checkpoints(run: Path) -> list[Path]:
    """Every complete checkpoint of ``run``, newest first (the ``latest`` pointer's first when valid)."""
    ckdir = run / "checkpoints"
    if not ckdir.is_dir():
        return []
    complete = sorted((p for p in ckdir.glob("step_*") if (p / COMPLETE).is_file()), reverse=True)
    pointer = ckdir / LATEST
    try:
        named = ckdir / pointer.read_text().strip() if pointer.is_file() else None
    except (OSError, UnicodeDecodeError):
        named = None
    if named is not None and named in complete:
        complete.remove(named)
        complete.insert(0, named)
    return complete


def set_aside(ckpt: Path) -> Path:
    """Rename an unusable checkpoint out of the way (kept for inspection, never read or pruned)."""
    target = ckpt.with_name(f".corrupt-{ckpt.name}-{os.getpid()}")
    os.replace(ckpt, target)
    return target


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of ``run`` (``latest`` pointer, else the highest complete step)."""
    found = complete_checkpoints(run)
    return found[0] if found else None


def begin(run: Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step`` (main rank)."""
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    tmp = ckdir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(run: Path, tmp: Path, step: int, keep: int) -> Path:
    """Seal ``tmp`` as the checkpoint of ``step``: fsync, rename, switch ``latest``, prune old ones."""
    from hsa_core.io import apply_umask_modes

    (tmp / COMPLETE).write_text(f"{step}\n")
    apply_umask_modes(tmp)  # safetensors writes 0600; a checkpoint's files all get the umask's modes
    fsync_tree(tmp)
    ckdir = run / "checkpoints"
    final = ckdir / step_dir_name(step)
    if final.exists():
        # Same step already checkpointed (resumed exactly at a checkpoint): keep the existing one.
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, final)
    fd = os.open(ckdir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    write_text_atomic(ckdir / LATEST, final.name + "\n")
    complete = sorted(p for p in ckdir.glob("step_*") if (p / COMPLETE).is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckdir.glob(".tmp-*"):  # leftovers of crashed writes
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """``trainer.json`` of a checkpoint, checked for the keys resuming needs.

    Raises:
        InvalidFileError: unreadable, invalid JSON, missing keys, or the pickle-based format 1.
    """
    path = ckpt / "trainer.json"
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(
            state.get("config"), dict) or not isinstance(state.get("tokens"), int):
        raise InvalidFileError(f"{path}: expected an object with an integer 'step' and 'tokens' and a 'config'")
    if state.get("format", 1) != FORMAT:
        raise InvalidFileError(f"{ckpt} has checkpoint format {state.get('format', 1)}; this version reads format "
                               f"{FORMAT} (format 1 stored pickles, which are never loaded because unpickling can "
                               "run code)")
    return state


def model_dir_of(run: str | Path) -> Path:
    """The model directory a run stands for: ``RUN/model``, else ``RUN`` itself when it is a model
    directory, else the model of its newest complete checkpoint."""
    run = Path(run)
    if (run / "model" / "config.json").is_file():
        return run / "model"
    if (run / "config.json").is_file() or (run / "config.yaml").is_file():
        return run
    latest = latest_checkpoint(run)
    if latest is not None:
        return latest / "model"
    raise InvalidFileError(f"{run} is neither a run directory (no model/ or checkpoints/) nor a model directory")
