"""What a model is made of: a layer table with memory wiring, parameter totals, state and memory sizes.

:func:`describe` works on a built model or on a spec (built on the meta device, so describing
RAMba-370M allocates nothing). ``hsa build`` prints :meth:`ModelSummary.format_table` (or
:meth:`ModelSummary.to_dict` as JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .model import Block, HSALanguageModel, RetrievalBlock
from .plugins import PluginHost
from .units import format_bytes, format_count

__all__ = ["ModelSummary", "SummaryRow", "describe", "format_bytes", "format_count"]


@dataclass(frozen=True)
class SummaryRow:
    """One line of the layer table.

    Attributes:
        index: layer index, or ``None`` for rows that are not layers (embedding, memory, selection,
            final norm, head).
        kind: layer kind (``mamba2``, ``hsa``...) or ``embedding``/``memory``/``selection``/``norm``/``lm_head``.
        plugin: the plugin that registered the kind (``hsa_core`` for the model's own parts).
        wiring: how the row connects to memories (``reads mid via mid_sel``, ``builds memory mid``...).
        params: parameters owned by this row (a tied head owns none).
        name: memory or selection name for those rows.
        mlp: the layer has a SwiGLU sub-block.
    """

    index: int | None
    kind: str
    plugin: str
    wiring: str
    params: int
    name: str | None = None
    mlp: bool = False


@dataclass
class ModelSummary:
    """Layer table and totals of a model.

    Attributes:
        rows: the table, in data-flow order.
        total: distinct parameters (tied weights once).
        embedding: the embedding (which is also the head when tied).
        backbone: backbone blocks (mixers with their norms and MLP sub-blocks).
        hsa_extras: chunk memories (encoder, K/V, landmarks), retrieval projections and retrieval
            layers (with their MLP sub-blocks).
        other: final norm and an untied head.
        context_len: the context length the sizes below are for.
        state_bytes: recurrent state of every mixer for one sequence after ``context_len`` tokens.
        memory_bytes: every chunk memory (K, V, landmarks, pending) for one sequence after ``context_len``.
        dtype: the dtype sizes were computed for.
        memory_host_bytes: the part of ``memory_bytes`` in host memory at inference (K/V of the memories
            with ``offload: true``).
    """

    name: str | None
    rows: list[SummaryRow]
    total: int
    embedding: int
    backbone: int
    hsa_extras: int
    other: int
    context_len: int
    state_bytes: int
    memory_bytes: int
    dtype: str
    num_layers: int
    layer_kinds: dict[str, int] = field(default_factory=dict)
    memory_host_bytes: int = 0

    def sizes_line(self) -> str:
        """``per sequence at N tokens (dtype): recurrent state X, chunk memory Y[, of which Z ...]``."""
        host = (f" (K/V {format_bytes(self.memory_host_bytes)} of it in host memory: offload)"
                if self.memory_host_bytes else "")
        return (f"per sequence at {self.context_len:,} tokens ({self.dtype}): recurrent state "
                f"{format_bytes(self.state_bytes)}, chunk memory {format_bytes(self.memory_bytes)}{host}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (``hsa build --json``)."""
        return asdict(self)

    def format_table(self) -> str:
        """The summary as plain text (fixed-width table plus totals)."""
        head = ("idx", "kind", "plugin", "params", "wiring")
        body = [(("" if r.index is None else str(r.index)), r.kind + (" +mlp" if r.mlp else ""), r.plugin,
                 format_count(r.params), r.wiring) for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [
            "",
            f"parameters: {format_count(self.total)} total = {format_count(self.embedding)} embedding"
            f" + {format_count(self.backbone)} backbone + {format_count(self.hsa_extras)} HSA extras"
            f" + {format_count(self.other)} other",
            self.sizes_line(),
        ]
        return "\n".join(lines)


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _state_bytes(mixer: Any, context_len: int, dtype: torch.dtype) -> int:
    """Bytes of a mixer's state after ``context_len`` tokens (elements from ``state_size``, the
    element width from the dtypes the mixer actually keeps, e.g. fp32 states in a bf16 model)."""
    elements = mixer.state_size(1, context_len)
    state = mixer.init_state(1, device="meta", dtype=dtype)
    n = sum(t.numel() for t in state.values())
    per = (sum(t.numel() * t.element_size() for t in state.values()) / n) if n else torch.empty(
        (), dtype=dtype).element_size()
    return round(elements * per)


def describe(model_or_spec: HSALanguageModel | Mapping[str, Any], *, context_len: int,
             dtype: torch.dtype | None = None, host: PluginHost | None = None) -> ModelSummary:
    """Summarise a model (or a spec, built on the meta device).

    Args:
        model_or_spec: a built :class:`HSALanguageModel`, or a raw/canonical spec.
        context_len: tokens per sequence for the state and memory sizes.
        dtype: activation dtype for the sizes (default: the model's parameter dtype).
    """
    if context_len < 0:
        raise ValueError(f"context_len must be >= 0, got {context_len}")
    if isinstance(model_or_spec, HSALanguageModel):
        model = model_or_spec
    else:
        model = HSALanguageModel.from_spec(model_or_spec, device="meta", host=host)
    spec = model.spec
    dtype = dtype or model.embedding.weight.dtype
    elsize = torch.empty((), dtype=dtype).element_size()
    d = spec["model"]["d_model"]

    rows: list[SummaryRow] = [SummaryRow(None, "embedding", "hsa_core",
                                         "tied to the LM head" if model.tied else "", _count(model.embedding))]
    readers: dict[str, list[int]] = {}
    for layer in spec["layers"]:
        if layer["role"] == "retrieval":
            readers.setdefault(layer["selection"], []).append(layer["index"])
    built_after: dict[int, list[str]] = {}
    for name, mem in spec["memories"].items():
        built_after.setdefault(mem["after_layer"], []).append(name)

    def memory_rows(after: int) -> list[SummaryRow]:
        out = []
        for name in built_after.get(after, ()):
            mem = spec["memories"][name]
            enc = mem["encoder"]["layers"]
            geometry = (f"S={mem['chunk_size']}, H={mem['kv_heads']}, D={mem['head_dim']}, "
                        f"{enc}-layer encoder, {mem['landmark']} landmarks")
            out.append(SummaryRow(None, "memory", "hsa_core",
                                  f"builds memory {name} from the stream after {after} layers ({geometry})",
                                  _count(model.memories[name]), name=name))
        return out

    backbone = hsa_extras = 0
    selection_shown: set[str] = set()
    rows += memory_rows(0)
    for i, (layer, block) in enumerate(zip(spec["layers"], model.layers)):
        if isinstance(block, Block):
            params = _count(block)
            backbone += params
            wiring = ""
        else:
            assert isinstance(block, RetrievalBlock)
            sel_name, mem_name = layer["selection"], layer["memory"]
            sel = spec["retrieval"][sel_name]
            if sel["shared"] and sel_name not in selection_shown:
                selection_shown.add(sel_name)
                params_sel = _count(model.selections[sel_name])
                hsa_extras += params_sel
                users = ", ".join(str(j) for j in readers[sel_name])
                rows.append(SummaryRow(None, "selection", "hsa_core",
                                       f"selection {sel_name} over {mem_name}: top-{sel['topk']} {sel['weighting']}, "
                                       f"d_r={sel['retrieval_dim']}, H_r={sel['retrieval_heads']}, "
                                       f"shared by layers {users}", params_sel, name=sel_name))
            params = _count(block)
            hsa_extras += params
            wiring = f"reads {mem_name} via {sel_name}" + ("" if sel["shared"] else " (re-selects: multi-hop)")
        rows.append(SummaryRow(i, layer["kind"], layer["plugin"], wiring, params, mlp=layer["mlp"]))
        rows += memory_rows(i + 1)
    hsa_extras += sum(_count(m) for m in model.memories.values())
    # Selections no layer reads have no module (nothing to count).
    rows.append(SummaryRow(None, "norm", "hsa_core", "final RMSNorm", _count(model.norm_f)))
    head = 0 if model.tied else _count(model.lm_head)
    rows.append(SummaryRow(None, "lm_head", "hsa_core", "tied to the embedding" if model.tied else "", head))

    state_bytes = sum(_state_bytes(b.mixer, context_len, dtype) for b in model.layers if isinstance(b, Block))
    memory_bytes = memory_host_bytes = 0
    for mem in spec["memories"].values():
        S = mem["chunk_size"]
        C, P = divmod(context_len, S)
        kv = 2 * C * S * mem["kv_heads"] * mem["head_dim"] * elsize
        memory_bytes += kv + (C * mem["landmark_dim"] + P * d) * elsize
        memory_host_bytes += kv if mem.get("offload") else 0

    kinds: dict[str, int] = {}
    for layer in spec["layers"]:
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0) + 1
    embedding = _count(model.embedding)
    other = _count(model.norm_f) + head
    total = model.num_parameters()
    assert total == embedding + backbone + hsa_extras + other, "summary rows do not add up to the model"
    return ModelSummary(
        name=spec.get("name"), rows=rows, total=total, embedding=embedding, backbone=backbone,
        hsa_extras=hsa_extras, other=other, context_len=context_len, state_bytes=state_bytes,
        memory_bytes=memory_bytes, dtype=str(dtype).removeprefix("torch."), num_layers=len(spec["layers"]),
        layer_kinds=kinds, memory_host_bytes=memory_host_bytes)
