"""The canonical spec as frozen dataclasses: typed fields in place of nested dicts.

:func:`~hsa_core.layout.resolve` validates a layout and returns the canonical spec as a plain JSON-able
dict (what ``config.json`` holds and ``hsa build --json`` prints). :class:`ResolvedSpec` is the same
content, typed: the model settings (:class:`ModelSettings`), the memory groups (:class:`MemoryGroup`
with its :class:`EncoderSettings`), the retrieval groups (:class:`SelectionGroup`) and the layers
(:class:`LayerSpec`). ``ResolvedSpec.from_dict(resolve(raw)).to_dict() == resolve(raw)`` with the same
key order, so both serialise to byte-identical canonical JSON; the model builder reads the typed form.

Example::

    from hsa_core.layout import ResolvedSpec, load_spec
    spec = ResolvedSpec.from_dict(load_spec("examples/ramba-cpu.yaml"))   # or ResolvedSpec.load(...)
    spec.memories["mid"].chunk_size, [layer.kind for layer in spec.layers]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import SpecError

__all__ = ["EncoderSettings", "LayerSpec", "MemoryGroup", "ModelSettings", "ResolvedSpec", "SelectionGroup"]

_T = TypeVar("_T", bound="_Record")


@dataclass(frozen=True)
class _Record:
    """A frozen record whose fields are, in order, the keys of one mapping of the canonical spec.

    Fields listed in ``_OPTIONAL`` are left out of :meth:`to_dict` when ``None`` (as the canonical spec
    leaves them out); nested records are converted by :meth:`_field_from` / :meth:`to_dict`.
    """

    _OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[_T], data: Mapping[str, Any], path: str = "") -> _T:
        """Build from a mapping of the canonical spec (missing or unknown keys: :class:`SpecError`)."""
        if not isinstance(data, Mapping):
            raise SpecError(path, f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise SpecError(_join(path, str(unknown[0])), f"not a field of {cls.__name__} (fields: {', '.join(names)})")
        missing = [n for n in names if n not in data and n not in cls._OPTIONAL]
        if missing:
            raise SpecError(_join(path, missing[0]), "missing (required in a canonical spec)")
        return cls(**{n: cls._field_from(n, data[n], _join(path, n)) for n in names if n in data})

    @classmethod
    def _field_from(cls, name: str, value: Any, path: str) -> Any:
        return copy.deepcopy(value)

    def to_dict(self) -> dict[str, Any]:
        """The mapping of the canonical spec: same keys, same order, JSON-able values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[f.name] = _plain(value)
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class ModelSettings(_Record):
    """``model``: vocabulary, width, embeddings, norms, MLP width, initialisation."""

    vocab_size: int
    d_model: int
    tie_embeddings: bool
    norm_eps: float
    mlp_hidden: int
    init_std: float
    init: str


@dataclass(frozen=True)
class EncoderSettings(_Record):
    """``memories.<name>.encoder``: the chunk encoder (``layers = 0``: none)."""

    layers: int
    heads: int
    kv_heads: int
    qkv_bias: bool
    mlp_hidden: int
    mlp_rounding: str


@dataclass(frozen=True)
class MemoryGroup(_Record):
    """``memories.<name>``: a chunk memory built after ``after_layer`` layers."""

    after_layer: int
    chunk_size: int
    kv_heads: int
    head_dim: int
    landmark: str
    landmark_dim: int
    retrieval_heads: int
    encoder: EncoderSettings
    chunk_norm: bool
    k_norm: bool
    norm_eps: float
    offload: bool  # inference: K/V of complete chunks in host memory, landmarks on the device

    @classmethod
    def _field_from(cls, name: str, value: Any, path: str) -> Any:
        return EncoderSettings.from_dict(value, path) if name == "encoder" else copy.deepcopy(value)


@dataclass(frozen=True)
class SelectionGroup(_Record):
    """``retrieval.<name>``: a selection over one memory (``shared``: one for all its layers)."""

    memory: str
    topk: int
    retrieval_dim: int
    retrieval_heads: int
    weighting: str
    shared: bool
    gumbel: bool
    window: int | None
    landmark_norm: bool
    norm_eps: float


@dataclass(frozen=True)
class LayerSpec(_Record):
    """``layers[i]``: a backbone layer, or a retrieval layer with the selection and memory it reads."""

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("selection", "memory")

    index: int
    kind: str
    role: str
    plugin: str
    options: dict[str, Any]
    mlp: bool
    selection: str | None = None
    memory: str | None = None

    @property
    def is_retrieval(self) -> bool:
        return self.role == "retrieval"


@dataclass(frozen=True)
class ResolvedSpec(_Record):
    """The whole canonical spec (see :mod:`hsa_core.layout.spec` for what each part means)."""

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("description",)

    version: int
    name: str | None
    model: ModelSettings
    memories: dict[str, MemoryGroup] = field(default_factory=dict)
    retrieval: dict[str, SelectionGroup] = field(default_factory=dict)
    layers: tuple[LayerSpec, ...] = ()
    description: str | None = None

    @classmethod
    def _field_from(cls, name: str, value: Any, path: str) -> Any:
        if name == "model":
            return ModelSettings.from_dict(value, path)
        if name in ("memories", "retrieval"):
            record = MemoryGroup if name == "memories" else SelectionGroup
            if not isinstance(value, Mapping):
                raise SpecError(path, f"expected a mapping, got {type(value).__name__}")
            return {k: record.from_dict(v, _join(path, k)) for k, v in value.items()}
        if name == "layers":
            if not isinstance(value, list | tuple):
                raise SpecError(path, f"expected a list, got {type(value).__name__}")
            return tuple(LayerSpec.from_dict(v, f"{path}[{i}]") for i, v in enumerate(value))
        return copy.deepcopy(value)

    def to_dict(self) -> dict[str, Any]:
        """The canonical spec, keys in :func:`~hsa_core.layout.resolve`'s order (``description`` after
        ``name``, only when set)."""
        out = super().to_dict()
        order = ["version", "name", "description", "model", "memories", "retrieval", "layers"]
        return {k: out[k] for k in order if k in out}

    @classmethod
    def resolve(cls, raw: Mapping[str, Any] | ResolvedSpec, *, host: Any = None) -> ResolvedSpec:
        """Validate a layout (raw, canonical or already typed) and return it typed."""
        from .spec import resolve

        if isinstance(raw, ResolvedSpec):
            raw = raw.to_dict()
        return cls.from_dict(resolve(raw, host=host))

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any], *, overrides: Any = (), host: Any = None) -> ResolvedSpec:
        """:func:`~hsa_core.layout.load_spec` (a YAML file or a mapping, plus ``--set``
        overrides), typed."""
        from .loading import load_spec

        return cls.from_dict(load_spec(source, overrides=overrides, host=host))

    def memory_of(self, layer: LayerSpec) -> MemoryGroup:
        """The memory group a retrieval layer reads."""
        assert layer.memory is not None, f"layer {layer.index} ({layer.kind}) reads no memory"
        return self.memories[layer.memory]

    def selection_of(self, layer: LayerSpec) -> SelectionGroup:
        """The selection a retrieval layer reads through."""
        assert layer.selection is not None, f"layer {layer.index} ({layer.kind}) has no selection"
        return self.retrieval[layer.selection]
