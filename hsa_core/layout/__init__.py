"""Layouts: YAML -> canonical spec (validated, every default filled) -> model.

Public API::

    load_spec(path_or_mapping, *, overrides=(), source=None) -> dict   # read + --set + resolve
    resolve(raw) -> dict                                               # validate + canonicalise
    ResolvedSpec.from_dict(spec) / .to_dict() / .resolve(raw) / .load(path)  # the same, typed
    dump_spec(spec) -> str                                             # canonical YAML
    apply_overrides(raw, ["model.d_model=256", ...]) -> dict

Errors are :class:`hsa_core.errors.SpecError` with a path into the document.
"""

from __future__ import annotations

from .loading import apply_overrides, dump_spec, load_spec
from .pattern import expand_pattern
from .spec import FORMAT_VERSION, MEMORY_DEFAULTS, MODEL_DEFAULTS, SELECTION_DEFAULTS, resolve, swiglu_hidden
from .typed import EncoderSettings, LayerSpec, MemoryGroup, ModelSettings, ResolvedSpec, SelectionGroup

__all__ = [
    "FORMAT_VERSION",
    "MEMORY_DEFAULTS",
    "MODEL_DEFAULTS",
    "SELECTION_DEFAULTS",
    "EncoderSettings",
    "LayerSpec",
    "MemoryGroup",
    "ModelSettings",
    "ResolvedSpec",
    "SelectionGroup",
    "apply_overrides",
    "dump_spec",
    "expand_pattern",
    "load_spec",
    "resolve",
    "swiglu_hidden",
]
