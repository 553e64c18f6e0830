"""Model directories: ``config.yaml`` + ``config.json`` (the canonical spec) + ``model.safetensors``.

Writes are atomic: the three files go into a temporary directory beside the target, which is then
renamed into place, so a crash never leaves a half-written model directory, and an existing directory's
files are never overwritten in place (``overwrite=True`` swaps the whole directory).

Tied weights: safetensors refuses tensors that share storage, and a tied head is the embedding
anyway, so ``lm_head.weight`` is not stored when the spec ties it; loading re-ties it.

This module sits below :mod:`hsa_core.model` and never imports it: the model class comes in as an
argument (:func:`load_model`), and ``HSALanguageModel.from_pretrained`` is how callers load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from .errors import HSAError, SpecError

if TYPE_CHECKING:
    from .model import HSALanguageModel
    from .plugins import PluginHost

__all__ = ["CONFIG_JSON", "CONFIG_YAML", "WEIGHTS", "load_model", "read_config", "save_pretrained"]

CONFIG_YAML = "config.yaml"
CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
_TIED_KEY = "lm_head.weight"


def _state_for_saving(model: HSALanguageModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.tied:
        state.pop(_TIED_KEY, None)
    # safetensors refuses tensors sharing storage (a mixer may tie weights too): give those their own copy.
    counts: dict[int, int] = {}
    for v in state.values():
        counts[v.untyped_storage().data_ptr()] = counts.get(v.untyped_storage().data_ptr(), 0) + 1
    return {k: (v.detach().clone() if counts[v.untyped_storage().data_ptr()] > 1 else v.detach()).contiguous()
            for k, v in state.items()}


def save_pretrained(model: HSALanguageModel, directory: str | os.PathLike[str], *,
                    overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` atomically.

    Args:
        model: a built model (not on the meta device).
        directory: target directory; it must not exist unless ``overwrite``.
        overwrite: replace an existing directory (the old one is moved aside and deleted only after
            the new one is in place).

    Returns:
        The directory path.

    Raises:
        FileExistsError: the directory exists and ``overwrite`` is false.
        ValueError: the model is on the meta device.
    """
    from safetensors.torch import save_file

    from .layout import dump_spec

    target = Path(directory)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError("cannot save a model built on the meta device (it has no weights)")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        spec = model.spec
        (tmp / CONFIG_YAML).write_text(dump_spec(spec))
        (tmp / CONFIG_JSON).write_text(json.dumps(spec, indent=2) + "\n")
        # One metadata key only: safetensors writes the metadata map in hash order, and a byte-identical
        # file for identical weights is worth keeping (load -> save -> load is checked byte for byte).
        save_file(_state_for_saving(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)  # put the previous version back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec stored in a model directory (``config.json``, else ``config.yaml``), unresolved."""
    d = Path(directory)
    if (d / CONFIG_JSON).is_file():
        return json.loads((d / CONFIG_JSON).read_text())
    if (d / CONFIG_YAML).is_file():
        return yaml.safe_load((d / CONFIG_YAML).read_text())
    raise FileNotFoundError(f"{d} is not a model directory (no {CONFIG_JSON} or {CONFIG_YAML})")


def load_model(model_class: type[HSALanguageModel], directory: str | os.PathLike[str], *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               host: PluginHost | None = None) -> HSALanguageModel:
    """Load a model directory written by :func:`save_pretrained` as a ``model_class`` (what
    ``HSALanguageModel.from_pretrained`` calls).

    Args:
        model_class: the model class (``HSALanguageModel`` or a subclass), built by its ``from_spec``.
        device: where to put the weights (default CPU).
        dtype: cast floating weights to this dtype (default: as stored).

    Raises:
        SpecError: the stored config is invalid (e.g. a backbone plugin is no longer installed).
        HSAError: the weights do not match the config (missing or unexpected tensors, wrong shapes).
    """
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        spec = read_config(d)
        # Built on meta and filled by assignment: no throw-away initialisation of a large model...
        model = model_class.from_spec(spec, device="meta", host=host)
        if set(dict(model.named_buffers())) - set(model.state_dict()):
            # ...unless some module has non-persistent buffers (not in the file): build it for real.
            model = model_class.from_spec(spec, device=device or "cpu", host=host)
    except SpecError as exc:
        raise exc.with_source(str(d / CONFIG_JSON)) from None
    state = load_file(str(d / WEIGHTS), device=str(device or "cpu"))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    expected = set(model.state_dict())
    if model.tied:
        expected.discard(_TIED_KEY)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HSAError(f"{d / WEIGHTS} does not match its config: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise HSAError(f"{d / WEIGHTS} does not match its config: {exc}") from None
    if model.spec["model"]["tie_embeddings"]:
        model.lm_head.weight = model.embedding.weight
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftovers:
        raise HSAError(f"after loading, these tensors are still unset: {leftovers[:5]}")
    return model
