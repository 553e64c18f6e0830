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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from .errors import HSAError, InvalidFileError, SpecError, truncate

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
        apply_umask_modes(tmp)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask_modes(directory: Path) -> None:
    """Give ``directory``, its subdirectories and files the modes the umask allows (``0o777``/``0o666``).

    ``tempfile.mkdtemp`` creates ``0o700`` directories and safetensors writes ``0o600`` files; a model
    directory or checkpoint renamed into place from there would have private weights beside
    world-readable configs. Called on the temporary directory just before its rename.
    """
    mask = _umask()
    for root, dirs, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    directory.chmod(0o777 & ~mask)


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first path where two JSON-like values differ (``None`` when equal); lists/tuples alike."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return where
            found = first_difference(a[key], b[key], where)
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        return path or "(top level)"
    return None if a == b else (path or "(top level)")


def _load_text(path: Path, parse: Any, what: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
        return parse(text)
    except UnicodeDecodeError as exc:
        raise InvalidFileError(f"{path}: not UTF-8 text (offset {exc.start}); the {what} is corrupt") from None
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise InvalidFileError(f"{path}: invalid {what}: {truncate(str(exc), 200)}") from None


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec stored in a model directory, unresolved.

    ``config.json`` is the source of truth; ``config.yaml`` is the same spec written for people. When
    both exist and disagree (someone edited one of them), loading refuses instead of silently picking
    one: the error names the first differing key. With only one of them, that one is read.

    Raises:
        InvalidFileError: neither file exists, a config that is not valid JSON/YAML or not a mapping,
            or the two disagree.
    """
    d = Path(directory)
    has_json, has_yaml = (d / CONFIG_JSON).is_file(), (d / CONFIG_YAML).is_file()
    if not has_json and not has_yaml:
        raise InvalidFileError(f"{d} is not a model directory (no {CONFIG_JSON} or {CONFIG_YAML})")
    config = _load_text(d / CONFIG_JSON, json.loads, "JSON") if has_json else None
    if has_yaml:
        from .layout.loading import check_document_size

        other = _load_text(d / CONFIG_YAML, yaml.safe_load, "YAML")
        try:
            check_document_size(other)
        except SpecError as exc:
            raise InvalidFileError(f"{d / CONFIG_YAML}: {exc.message}") from None
        if config is None:
            config = other
        else:
            where = first_difference(config, other)
            if where is not None:
                raise InvalidFileError(
                    f"{d}: {CONFIG_YAML} and {CONFIG_JSON} disagree at '{truncate(where, 80)}'; {CONFIG_JSON} is the "
                    f"source of truth: undo the edit, or delete {CONFIG_JSON} to load the edited {CONFIG_YAML} "
                    f"(the next save writes both again)")
    if not isinstance(config, dict):
        raise InvalidFileError(f"{d / (CONFIG_JSON if has_json else CONFIG_YAML)}: expected a mapping (a layout), "
                               f"got {type(config).__name__}")
    return config


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
        SpecError: the stored config is invalid (e.g. a backbone plugin is no longer installed: the
            message names the plugin the config records).
        InvalidFileError (an :class:`HSAError`): not a model directory, a config that is not valid
            JSON/YAML or where ``config.yaml`` and ``config.json`` disagree, a corrupt or truncated
            ``model.safetensors``, or weights that do not match the config (missing or unexpected
            tensors, wrong shapes).
        ResourceLimitError: the weights do not fit in the free memory of ``device``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .limits import check_fits

    d = Path(directory)
    if not d.is_dir():
        raise InvalidFileError(f"{d} is not a model directory (not a directory)")
    try:
        spec = read_config(d)
        # Built on meta and filled by assignment: no throw-away initialisation of a large model...
        model = model_class.from_spec(spec, device="meta", host=host)
        check_fits(model, device or "cpu", what=f"the model in {d}")
        if set(dict(model.named_buffers())) - set(model.state_dict()):
            # ...unless some module has non-persistent buffers (not in the file): build it for real.
            model = model_class.from_spec(spec, device=device or "cpu", host=host)
    except SpecError as exc:
        raise exc.with_source(str(d / CONFIG_JSON)) from None
    except (ValueError, TypeError) as exc:  # a backbone's constructor refusing the stored options
        if isinstance(exc, HSAError):
            raise
        raise InvalidFileError(f"{d / CONFIG_JSON}: building the model failed: {type(exc).__name__}: "
                               f"{truncate(str(exc), 300)}") from None
    if not (d / WEIGHTS).is_file():
        raise InvalidFileError(f"{d} has no {WEIGHTS}")
    try:
        state = load_file(str(d / WEIGHTS), device=str(device or "cpu"))
    except (SafetensorError, ValueError, OSError) as exc:  # truncated, garbage, wrong header
        raise InvalidFileError(f"{d / WEIGHTS} is not a valid safetensors file ({truncate(str(exc), 200)}); "
                               "the file is corrupt or truncated") from None

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    expected = set(model.state_dict())
    if model.tied:
        expected.discard(_TIED_KEY)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InvalidFileError(f"{d / WEIGHTS} does not match its config: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise InvalidFileError(f"{d / WEIGHTS} does not match its config: {truncate(str(exc), 400)}") from None
    if model.spec["model"]["tie_embeddings"]:
        model.lm_head.weight = model.embedding.weight
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftovers:
        raise InvalidFileError(f"{d}: after loading, these tensors are still unset: {leftovers[:5]}")
    return model
