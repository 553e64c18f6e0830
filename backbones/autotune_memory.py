"""Autotuning decisions kept across processes for mamba-ssm's and fla's kernels.

Why: with ``TRITON_CACHE_AUTOTUNING=1`` Triton stores each autotuning result on disk, so that the
next process on the machine skips the timing. It does not for kernels whose candidate configurations
carry a ``pre_hook``: Triton cannot serialise the hook and times them again in every process
(``Autotuner.check_disk_cache``); mamba-ssm's backward kernels are such kernels (their hooks zero the
outputs they accumulate into). Measured on the H200 (real-text run 9): a passkey fine-tune stage of
the real-text RAMba, a new process after the LM phase on the same machine, spent 16.4 s of its 36.6-s
first step timing 11 backward kernels again, all at keys the LM phase had timed already; of a 40-s
stage, that left 9 steps. Only 4 of the 11 have hooked candidates: Triton's disk cache missed the
other 7 too, for a reason not found (the next stage, at the LM's shapes, found them). So this module
keeps the decisions of every autotuner it is given, hooked or not, instead of relying on Triton's.

What: for the autotuners of a package (the ones :mod:`.launch_tables` narrows), each decision is
written to a JSON file under Triton's cache directory when the process exits, and read back into the
autotuner's in-memory cache (``Autotuner.cache``: key -> chosen ``Config``) when the package's kernels
are set up in a later process, so Triton neither times them nor consults its own disk cache. Rules:

* only when ``TRITON_CACHE_AUTOTUNING`` is on and not under the interpreter (Triton's own condition
  for keeping autotuning results);
* a decision is reused only for the same kernel source (``JITFunction.cache_key``), the same GPU,
  Triton and torch versions, the same autotuning key, and the same candidate list; the chosen
  configuration is the autotuner's own candidate object (its hook included), never one built from the
  file, so a file can never introduce a configuration.

File: ``<triton cache dir>/hsa_autotune/<gpu and versions digest>.json``, ``{kernel name: {"source":
cache key, "entries": {json(key): {"key": [...], "candidates": digest, "config": record}}}}``,
merged with what other processes wrote and replaced atomically.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .launch_tables import apply_launch_table, autotuners, config_record

__all__ = ["decisions_file", "describe", "enabled", "load_decisions", "remember_decisions", "save_decisions",
           "set_up_autotuning"]

_tracked: dict[str, Any] = {}  # kernel name -> autotuner whose decisions are saved at exit
_walked: dict[tuple[str, ...], int] = {}  # prefixes -> len(sys.modules) when last walked
_registered = False


def enabled() -> bool:
    """Whether decisions are kept: Triton's own condition for its disk cache of autotuning results."""
    from triton import knobs

    return bool(knobs.autotuning.cache) and not knobs.runtime.interpret


def decisions_file() -> Path:
    """This GPU's and Triton version's decisions file under Triton's cache directory."""
    import torch
    import triton
    from triton import knobs

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    digest = hashlib.sha256(f"{gpu}|triton {triton.__version__}|torch {torch.__version__}".encode()).hexdigest()
    return Path(knobs.cache.dir) / "hsa_autotune" / f"{digest[:32]}.json"


def describe() -> str:
    """One line for ``hsa info``: whether decisions are kept, where, and how many the file holds."""
    if not enabled():
        return "not kept (TRITON_CACHE_AUTOTUNING=1 keeps them)"
    path = decisions_file()
    stored = _read(path)
    entries = sum(len(k.get("entries") or {}) for k in stored.values() if isinstance(k, dict))
    return f"kept in {path} ({entries} decisions of {len(stored)} kernels)"


def _keeps(tuner: Any) -> bool:
    """Triton's in-memory cache where this module expects it (an autotuner of another Triton version
    without it is left alone)."""
    return isinstance(getattr(tuner, "cache", None), dict)


def _source(tuner: Any) -> str | None:
    """The kernel's source identity: Triton's cache key of the JIT function (it covers the functions it
    calls), else a hash of the Python source (the interpreter's functions have no cache key); ``None``
    when neither can be had (Triton cannot hash a kernel that calls an interpreted function): such a
    kernel is timed as usual."""
    fn = tuner.fn
    while True:
        try:
            key = getattr(fn, "cache_key", None)  # a property: it walks the kernel's dependencies
        except Exception:
            return None
        if key is not None:
            return str(key)
        inner = getattr(fn, "fn", None)  # through @triton.heuristics and the interpreter's wrapper
        if inner is None:
            break
        fn = inner
    import inspect

    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def _record_json(config: Any) -> str:
    return json.dumps(config_record(config), sort_keys=True)


def _candidates(tuner: Any) -> str:
    return hashlib.sha256("|".join(sorted(_record_json(c) for c in tuner.configs)).encode()).hexdigest()[:32]


def _plain(key: Any) -> bool:
    """A key JSON gives back unchanged: a tuple of ints, floats, bools, strings and None."""
    return isinstance(key, tuple) and all(v is None or isinstance(v, bool | int | float | str) for v in key)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: time the kernels as Triton would
    return data if isinstance(data, dict) else {}


def load_decisions(tuners: Iterable[tuple[str, Any]], path: Path) -> int:
    """Put the stored decisions that still hold into each ``(name, autotuner)``'s cache; returns how many."""
    stored = _read(path)
    loaded = 0
    for name, tuner in tuners:
        kernel = stored.get(name)
        if not isinstance(kernel, dict):
            continue  # before _source: hashing a kernel's source costs ~5 ms, and a package has hundreds
        source = _source(tuner)
        if source is None or kernel.get("source") != source:
            continue
        candidates = _candidates(tuner)
        by_record = {_record_json(c): c for c in tuner.configs}
        for entry in (kernel.get("entries") or {}).values():
            try:
                key, config = tuple(entry["key"]), by_record.get(json.dumps(entry["config"], sort_keys=True))
            except (KeyError, TypeError):
                continue
            if entry.get("candidates") == candidates and config is not None and key not in tuner.cache:
                tuner.cache[key] = config
                loaded += 1
    return loaded


def save_decisions(tuners: Iterable[tuple[str, Any]], path: Path) -> int:
    """Merge every ``(name, autotuner)``'s decisions into ``path`` (written atomically); returns how many
    the file holds for the kernels that made decisions."""
    stored = _read(path)
    count = 0
    for name, tuner in tuners:
        if not tuner.cache:
            continue  # never run in this process: what other processes stored stays as it is
        source, candidates = _source(tuner), _candidates(tuner)
        if source is None:
            continue
        kernel = stored.get(name)
        if not isinstance(kernel, dict) or kernel.get("source") != source:
            kernel = {"source": source, "entries": {}}  # another version of the kernel: start again
        entries = kernel.setdefault("entries", {})
        for key, config in list(tuner.cache.items()):
            if _plain(key) and config in tuner.configs:
                entries[json.dumps(list(key))] = {"key": list(key), "candidates": candidates,
                                                  "config": config_record(config)}
        stored[name] = kernel
        count += len(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _save_at_exit() -> None:
    # Never disturb the exit: a read-only cache directory, or CUDA gone after an error, costs the next
    # process its timing and nothing else.
    with contextlib.suppress(Exception):
        save_decisions(_tracked.items(), decisions_file())


def remember_decisions(prefixes: Iterable[str]) -> int:
    """Reuse and keep the autotuning decisions of the kernels of the imported packages
    ``prefixes`` (when :func:`enabled`); returns how many stored decisions were loaded. Idempotent."""
    global _registered
    prefixes = tuple(prefixes)
    if not enabled() or _walked.get(prefixes) == len(sys.modules):
        return 0  # off, or nothing imported since the last walk (each layer's constructor calls this)
    _walked[prefixes] = len(sys.modules)
    new = [(name, tuner) for name, tuner in autotuners(prefixes) if name not in _tracked and _keeps(tuner)]
    if not new:
        return 0
    _tracked.update(new)
    if not _registered:
        atexit.register(_save_at_exit)
        _registered = True
    return load_decisions(new, decisions_file())


def set_up_autotuning(package: str) -> str:
    """What a backbone calls once the Triton kernels of ``package`` (``"mamba_ssm"``, ``"fla"``) are
    imported on a GPU: their candidates narrowed to this GPU's launch table
    (:func:`~.launch_tables.apply_launch_table`, whose description it returns), then the decisions
    earlier processes stored put back (:func:`remember_decisions`). Cheap to call often."""
    description = apply_launch_table(package)
    remember_decisions([package])
    return description
