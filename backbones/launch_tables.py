"""Measured launch settings for the third-party Triton kernels the backbones run (mamba-ssm, fla).

Why: mamba-ssm and fla pick each kernel's block sizes, warps and stages by autotuning: the first call
with a new key compiles and times every candidate configuration. Over the few dozen kernels of a
Mamba2, GLA or RWKV7 training step that is minutes before the first step on a fresh machine
(measured on the H200: 127-152 s for ``ramba-370m``, over 150 s for ``gla-hsa`` and ``rwkv7-hsa``),
and Triton keeps the winners per machine only (``TRITON_CACHE_AUTOTUNING``). So the winners measured
on an architecture are shipped as a table, ``launch_tables/<arch>.json`` (recorded on the hardware by
``bench/model/record_launch_table.py``), and each kernel's candidate list is narrowed to the
configurations that won there, plus one small fallback (:func:`safest_config`). Triton's autotuner
still runs, over two candidates at most instead of dozens.

Rules:

* narrowing only: a table entry is kept only where it equals one of the library's own candidates, so
  a table recorded for another version of mamba-ssm or fla can never introduce a configuration;
  a kernel none of whose recorded winners is among its candidates keeps its full list, as does a
  kernel absent from the table;
* per kernel object, never process-wide: Triton itself is not patched, and kernels outside the named
  packages (ours included) are untouched;
* ``HSA_AUTOTUNE=full`` turns narrowing off (recording uses it); ``HSA_LAUNCH_TABLE=PATH`` reads
  another table file instead of the shipped one for this GPU's architecture.

Table format (JSON): ``{"arch": "sm90", "device": ..., "versions": {...}, "kernels": {NAME: [CONFIG,
...]}}`` where NAME is ``<module>.<attribute>`` of the kernel object (e.g.
``mamba_ssm.ops.triton.ssd_chunk_scan._chunk_scan_fwd_kernel``) and CONFIG is
``{"kwargs": {...}, "num_warps": int, "num_stages": int, "num_ctas": int, "maxnreg": int | null}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from hsa_core.errors import HSAError

__all__ = ["ENV_AUTOTUNE", "ENV_TABLE", "LaunchTable", "apply_launch_table", "autotuners", "config_record",
           "describe_launch_table", "narrow", "safest_config", "table_for_this_gpu"]

ENV_AUTOTUNE = "HSA_AUTOTUNE"  # "table" (default) or "full"
ENV_TABLE = "HSA_LAUNCH_TABLE"  # path of a table file to use instead of the shipped one

LaunchTable = dict[str, list[dict[str, Any]]]  # kernel name -> recorded winning configs


def _autotune_mode() -> str:
    value = os.environ.get(ENV_AUTOTUNE, "table").strip().lower()
    if value not in ("table", "full"):
        raise HSAError(f"{ENV_AUTOTUNE}={value!r} is not allowed; use 'table' (shipped launch tables, the "
                       "default) or 'full' (the libraries' own autotuning over every candidate)")
    return value


def autotuners(prefixes: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """Every Triton ``Autotuner`` defined at module level in the imported packages ``prefixes``.

    Yields ``(name, autotuner)`` with ``name = "<module>.<attribute>"``; an autotuner wrapped in
    ``@triton.heuristics`` is found through the wrapper. Each object is yielded once.
    """
    from triton.runtime.autotuner import Autotuner, Heuristics

    prefixes = tuple(prefixes)
    seen: set[int] = set()
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == p or module_name.startswith(p + ".") for p in prefixes):
            continue
        for attr, obj in list(vars(module).items()):
            while isinstance(obj, Autotuner | Heuristics):
                if isinstance(obj, Autotuner) and id(obj) not in seen:
                    seen.add(id(obj))
                    yield f"{module_name}.{attr}", obj
                obj = obj.fn


def config_record(config: Any) -> dict[str, Any]:
    """A ``triton.Config`` as the JSON object the tables store (its launch settings, not its hooks)."""
    return {"kwargs": dict(sorted(config.kwargs.items())), "num_warps": config.num_warps,
            "num_stages": config.num_stages, "num_ctas": config.num_ctas, "maxnreg": config.maxnreg}


def safest_config(configs: list[Any]) -> Any:
    """The candidate most likely to fit any shape: the least shared memory, estimated as pipeline stages
    x the product of the integer tile sizes, then the smallest tiles, then the fewest warps. Narrowing
    keeps it beside the recorded winners: for an autotune key the table was not recorded at (another
    head dim, fp32 inputs), a winner may not fit in shared memory, and Triton skips a candidate that
    fails only when it has more than one to time.

    (Ranking by stages first picked mamba-ssm's largest matmul tiles, 128 x 256 x 64 at 3 stages, over
    64 x 32 x 32 at 5: the one candidate that overflowed the H200's shared memory when the launch
    table was recorded.)"""

    def size(config: Any) -> tuple[int, int, int]:
        tiles = 1
        for value in config.kwargs.values():
            if isinstance(value, int) and not isinstance(value, bool):
                tiles *= max(value, 1)
        return (max(config.num_stages, 1) * tiles, tiles, config.num_warps)

    return min(configs, key=size)


def narrow(prefixes: Iterable[str], table: LaunchTable) -> int:
    """Narrow each autotuner of ``prefixes`` found in ``table`` to its recorded winners that are among
    its own candidates, plus :func:`safest_config`; returns how many autotuners run from the table.
    Idempotent."""
    narrowed = 0
    for name, tuner in autotuners(prefixes):
        wanted = {json.dumps(c, sort_keys=True) for c in table.get(name, ())}
        if not wanted:
            continue
        keep = [c for c in tuner.configs if json.dumps(config_record(c), sort_keys=True) in wanted]
        if keep:
            fallback = safest_config(tuner.configs)
            tuner.configs = keep if fallback in keep else [*keep, fallback]
            narrowed += 1
    return narrowed


def _arch() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def table_for_this_gpu() -> tuple[str, LaunchTable] | None:
    """``(source, table)`` for this machine's GPU, or ``None`` (no CUDA, no table for this architecture,
    or ``HSA_AUTOTUNE=full``).

    Raises:
        HSAError: ``HSA_LAUNCH_TABLE`` names a file that is missing or not a launch table.
    """
    if _autotune_mode() == "full":
        return None
    override = os.environ.get(ENV_TABLE)
    if override:
        path = Path(override)
        try:
            data = json.loads(path.read_text())
            kernels = data["kernels"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HSAError(f"{ENV_TABLE}={override}: not a readable launch table ({type(exc).__name__}: {exc}); "
                           "expected JSON with a 'kernels' object") from exc
        return str(path), kernels
    arch = _arch()
    if arch is None:
        return None
    shipped = resources.files("hsa_backbones") / "launch_tables" / f"{arch}.json"
    if not shipped.is_file():
        return None
    return f"launch_tables/{arch}.json", json.loads(shipped.read_text())["kernels"]


def _full_autotuning() -> str:
    """Why there is no table to use (call only when :func:`table_for_this_gpu` found none)."""
    why = f"{ENV_AUTOTUNE}=full" if _autotune_mode() == "full" else "no launch table for this GPU"
    return f"full autotuning ({why})"


def describe_launch_table() -> str:
    """Where the launch settings of mamba-ssm's and fla's kernels come from on this machine (``hsa info``)."""
    found = table_for_this_gpu()
    if found is None:
        return _full_autotuning()
    return f"{found[0]}: measured winners of {len(found[1])} kernels (full autotuning: {ENV_AUTOTUNE}=full)"


_applied: dict[str, tuple[int, str]] = {}  # package -> (len(sys.modules) when last applied, description)


def apply_launch_table(package: str) -> str:
    """Narrow the imported kernels of ``package`` (``"mamba_ssm"``, ``"fla"``) to this GPU's shipped
    launch table; returns a one-line description for ``hsa info`` and logs.

    Cheap to call often (each backbone layer's constructor does): the modules are walked again only
    when more modules were imported since the last call.
    """
    last = _applied.get(package)
    if last is not None and last[0] == len(sys.modules):
        return last[1]
    found = table_for_this_gpu()
    if found is None:
        description = _full_autotuning()
    else:
        source, table = found
        description = f"launch table {source} ({narrow([package], table)} kernels)"
    _applied[package] = (len(sys.modules), description)
    return description
