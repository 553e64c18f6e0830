"""GLA, RWKV6 and RWKV7 backbones: adapters around flash-linear-attention (fla >= 0.6) layers.

Each adapter owns one fla layer as ``self.attn`` (``fla.layers.GatedLinearAttention``,
``RWKV6Attention``, ``RWKV7Attention``), so its parameter names are fla's block names with the
``model.layers.<i>.`` prefix stripped (``attn.q_proj.weight``, ...). The adapter converts between
fla's per-layer ``Cache`` entry and our flat, batch-first state dict:

============  ==================================================================================
kind          state
============  ==================================================================================
``gla``       ``recurrent`` ``(B, H, head_v_dim, head_k_dim)`` (fla keeps GLA's state value-first);
              with ``use_short_conv``: ``conv_q``/``conv_k`` ``(B, key_dim, conv_size)``,
              ``conv_v`` ``(B, value_dim, conv_size)``
``rwkv6``     ``recurrent`` ``(B, H, head_k_dim, head_v_dim)``; ``shift`` ``(B, d_model)`` the last input
              (token shift)
``rwkv7``     ``recurrent`` ``(B, H, head_dim, head_v_dim)``; ``shift`` ``(B, d_model)``
============  ==================================================================================

Recurrent states are kept in fp32 (fla's kernels return them so); incoming states are cloned before
fla sees them, because some of its kernels update caches in place.

**RWKV7's ``v_first``.** RWKV7 mixes every layer's values with the first layer's (``v_first``, the
"value residual"), which needs a channel between layers that the Mixer contract does not have. Each
``rwkv7`` adapter is therefore its own first layer (``layer_idx=0``: ``v_first`` is its own ``v`` and it
has no ``v_lora``). That is exact RWKV7 math for a single layer and keeps each layer a self-contained
mixer in any hybrid; what is lost is only the cross-layer value residual. fla needs
``num_hidden_layers >= 2`` for its layer-position-dependent initialisation; the adapter passes 2, i.e.
every adapter is initialised as the first of two layers (which zero-initialises ``o_proj``: the block
starts as the identity through its residual, as in RWKV7).

**CPU.** fla's layers are Triton throughout, so on a machine without CUDA they run only under Triton's
interpreter. We chose to make that work rather than raise: when CUDA is absent, the first use of an
adapter sets ``TRITON_INTERPRET=1`` *before* importing fla (Triton decides at decoration time), unless
fla was already imported without it, in which case a clear :class:`hsa_core.errors.HSAError` says so.
Two interpreter gaps are worked around right after fla is imported, only on CUDA-less machines and
only on fla's own kernel objects (:func:`prepare_fla_for_interpreter`; Triton's classes are not
patched): their autotuners' benchmark (no driver to time with) reports zero so the first config is
used, and their loop variables of ``for i in range(...)`` become interpreter tensors (RWKV7's chunked
kernels call ``i.to(tl.int64)``). The interpreter is slow (RWKV7's chunked backward takes seconds even
at T=16): fine for tests, not for training.
"""

from __future__ import annotations

import ast
import os
import sys
import warnings
from abc import abstractmethod
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from hsa_core.errors import HSAError, require
from hsa_core.interfaces import Mixer, MixerState

from .autotune_memory import set_up_autotuning
from .shadowing import import_pypi_kernels

GLA_DEFAULTS: dict[str, Any] = {
    "mode": "chunk",
    "num_heads": 4,
    "num_kv_heads": None,
    "expand_k": 0.5,
    "expand_v": 1.0,
    "feature_map": None,
    "use_short_conv": False,
    "conv_size": 4,
    "conv_bias": False,
    "use_output_gate": True,
    "gate_fn": "swish",
    "elementwise_affine": True,
    "norm_eps": 1e-5,
    "gate_logit_normalizer": 16,
    "gate_low_rank_dim": 16,
    "clamp_min": None,
    "fuse_norm": True,
}
RWKV6_DEFAULTS: dict[str, Any] = {
    "mode": "chunk",
    "num_heads": 4,
    "expand_k": 0.5,
    "expand_v": 1.0,
    "gate_fn": "swish",
    "proj_low_rank_dim": 32,
    "gate_low_rank_dim": 64,
    "fuse_norm": True,
    "elementwise_affine": True,
    "norm_eps": 1e-5,
}
RWKV7_DEFAULTS: dict[str, Any] = {
    "mode": "chunk",
    "head_dim": 64,
    "num_heads": None,  # None: d_model // head_dim
    "value_dim": None,  # None: d_model
    "decay_low_rank_dim": None,  # None: fla's size rule
    "gate_low_rank_dim": None,
    "a_low_rank_dim": None,
    "v_low_rank_dim": None,
    "elementwise_affine": True,
    "norm_eps": 1e-5,
    "fuse_norm": False,
}


# -- importing fla ------------------------------------------------------------------------------------
class _LoopVarsAsTensors(ast.NodeTransformer):
    """``for i in range(n): body`` -> ``for i in range(n): i = to_tensor(i); body``."""

    def visit_For(self, node: ast.For) -> ast.For:
        self.generic_visit(node)
        it = node.iter
        if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
                and isinstance(node.target, ast.Name)):
            wrap = ast.Assign(
                targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                value=ast.Call(
                    func=ast.Attribute(value=ast.Name(id="interpreter_semantic", ctx=ast.Load()),
                                       attr="to_tensor", ctx=ast.Load()),
                    args=[ast.Name(id=node.target.id, ctx=ast.Load()), ast.Constant(value=False)],
                    keywords=[]))
            node.body.insert(0, wrap)
        return node


def _zero_bench(fn: Any, quantiles: Any = None, **kwargs: Any) -> list[float]:
    return [0.0, 0.0, 0.0]


def prepare_fla_for_interpreter() -> int:
    """Work around two Triton-interpreter gaps in fla's kernels (CUDA-less machines), on fla's kernel
    objects only; returns how many were prepared.

    Nothing of Triton itself is patched: each ``Autotuner`` defined in an imported ``fla.*`` module gets
    an instance-level benchmark that reports zero (without a driver the autotuner cannot time configs
    and raises; every config is correct, the first one is used), and each of their interpreted
    functions an instance-level rewriter that turns ``for i in range(...)`` loop variables into
    interpreter tensors (RWKV7's chunked kernels call ``i.to(tl.int64)``). Our own kernels and anything
    else using Triton are unaffected. Idempotent; kernels of fla modules imported later are prepared by
    the next call (:func:`import_fla_layers` calls it after importing ``fla.layers``).
    """
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.interpreter import InterpretedFunction

    prepared = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.") or module is None:
            continue
        for obj in list(vars(module).values()):
            while isinstance(obj, Autotuner | Heuristics | InterpretedFunction):
                if isinstance(obj, Autotuner) and obj.__dict__.get("do_bench") is not _zero_bench:
                    obj.__dict__["do_bench"] = _zero_bench  # do_bench is a cached_property: instance wins
                    prepared += 1
                if isinstance(obj, InterpretedFunction) and not getattr(obj.rewriter, "_hsa_loop_vars", False):
                    rewriter = obj.rewriter
                    transform = rewriter._transform_ast
                    rewriter._transform_ast = (
                        lambda src, transform=transform: ast.fix_missing_locations(
                            _LoopVarsAsTensors().visit(transform(src))))
                    rewriter._hsa_loop_vars = True
                    prepared += 1
                obj = obj.fn
    return prepared


def import_fla_layers(what: str) -> ModuleType:
    """Import ``fla.layers``; on CUDA-less machines under Triton's interpreter, with fla's kernels prepared
    for it (:func:`prepare_fla_for_interpreter`).

    Raises:
        MissingDependencyError: fla is not installed (names the ``fla`` extra).
        HSAError: no CUDA, and fla was imported earlier without ``TRITON_INTERPRET=1``.
    """
    if not torch.cuda.is_available():
        interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        if not interpret:
            if "fla" in sys.modules:
                raise HSAError(
                    f"{what} runs fla's Triton kernels, which need CUDA or Triton's interpreter; fla was "
                    "already imported without it. Set TRITON_INTERPRET=1 before anything imports fla.")
            os.environ["TRITON_INTERPRET"] = "1"
    import_pypi_kernels()  # fla imports transformers, which imports it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fla warns about missing GPUs and RWKV's reference status
        layers = require("fla.layers", what=what, extra="fla")
    if torch.cuda.is_available():
        set_up_autotuning("fla")  # measured winners, and no timing again in later processes
    else:
        prepare_fla_for_interpreter()
    return layers


def _cache_module() -> ModuleType:
    return require("fla.models.utils", what="fla adapters", extra="fla")


# -- the adapters ------------------------------------------------------------------------------------
class _FLAMixer(Mixer):
    """Common part: build ``self.attn``, convert states, call the layer with a one-layer cache."""

    kind: str = ""
    layer_class: str = ""

    def __init__(self, d_model: int, layer_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.d_model = d_model
        layers = import_fla_layers(f"the '{self.kind}' backbone")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.attn = getattr(layers, self.layer_class)(hidden_size=d_model, layer_idx=0, **layer_kwargs)

    # Subclasses map between fla's layer-cache dict and our flat state.
    @abstractmethod
    def _to_fla(self, state: MixerState) -> dict[str, Any]: ...

    @abstractmethod
    def _from_fla(self, entry: dict[str, Any]) -> MixerState: ...

    def _call(self, x: Tensor, cache: Any, use_cache: bool) -> Tensor:
        return self.attn(x, past_key_values=cache, use_cache=use_cache)[0]

    def forward(self, x: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """Run the fla layer on ``x`` ``(B, T, d_model)`` from ``state``; returns ``(y, state)``."""
        if state is None and not return_state:
            return self._call(x, None, False), None
        cache_cls = _cache_module().Cache
        if state is None:
            cache = cache_cls()
        else:
            entry = {"recurrent_state": None, "attn_state": None, "conv_state": None, "ffn_state": None}
            entry.update(self._to_fla({k: v.clone() for k, v in state.items()}))
            cache = cache_cls.from_legacy_cache((entry,))
        y = self._call(x, cache, True)
        new = self._from_fla(cache[0])
        if state is not None:  # keep the caller's dtypes (fla may upcast)
            new = {k: v.to(state[k].dtype) for k, v in new.items()}
        return y, new


class GLA(_FLAMixer):
    """Gated linear attention (``fla.layers.GatedLinearAttention``); options: :data:`GLA_DEFAULTS`."""

    kind, layer_class = "gla", "GatedLinearAttention"

    def __init__(self, d_model: int, **options: Any) -> None:
        super().__init__(d_model, options)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Zero state (see the module docstring for the layout)."""
        a = self.attn
        dtype = dtype or a.q_proj.weight.dtype
        state = {"recurrent": torch.zeros(batch_size, a.num_heads, a.head_v_dim, a.head_k_dim, device=device,
                                          dtype=torch.float32)}
        if a.use_short_conv:
            for name in ("q", "k", "v"):
                conv = getattr(a, f"{name}_conv1d").weight  # (channels, 1, conv_size)
                state[f"conv_{name}"] = torch.zeros(batch_size, conv.shape[0], conv.shape[-1], device=device,
                                                    dtype=dtype)
        return state

    def _to_fla(self, state: MixerState) -> dict[str, Any]:
        entry: dict[str, Any] = {"recurrent_state": state["recurrent"]}
        if self.attn.use_short_conv:
            entry["conv_state"] = (state["conv_q"], state["conv_k"], state["conv_v"])
        return entry

    def _from_fla(self, entry: dict[str, Any]) -> MixerState:
        out = {"recurrent": entry["recurrent_state"]}
        if self.attn.use_short_conv:
            out["conv_q"], out["conv_k"], out["conv_v"] = entry["conv_state"]
        return out


class RWKV6(_FLAMixer):
    """RWKV6 time mixing (``fla.layers.RWKV6Attention``); options: :data:`RWKV6_DEFAULTS`."""

    kind, layer_class = "rwkv6", "RWKV6Attention"

    def __init__(self, d_model: int, **options: Any) -> None:
        super().__init__(d_model, options)

    def _key_dim(self) -> int:
        return self.attn.head_k_dim

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> MixerState:
        """Zero state: ``recurrent`` ``(B, H, head_k_dim, head_v_dim)`` fp32, ``shift`` ``(B, d_model)``."""
        a = self.attn
        dtype = dtype or a.o_proj.weight.dtype
        return {
            "recurrent": torch.zeros(batch_size, a.num_heads, self._key_dim(), a.head_v_dim, device=device,
                                     dtype=torch.float32),
            "shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
        }

    def _to_fla(self, state: MixerState) -> dict[str, Any]:
        return {"recurrent_state": state["recurrent"], "conv_state": state["shift"]}

    def _from_fla(self, entry: dict[str, Any]) -> MixerState:
        # fla returns the token shift as a view of the last input: copied, so that the carried state
        # does not keep the whole segment's input alive
        return {"recurrent": entry["recurrent_state"], "shift": entry["conv_state"].clone()}


class RWKV7(RWKV6):
    """RWKV7 time mixing (``fla.layers.RWKV7Attention``), each adapter its own first layer; options:
    :data:`RWKV7_DEFAULTS`. See the module docstring for how ``v_first`` is handled."""

    kind, layer_class = "rwkv7", "RWKV7Attention"

    def __init__(self, d_model: int, **options: Any) -> None:
        if options.get("num_heads") is not None:
            options = {**options, "head_dim": None}  # fla: head_dim wins when both are given
        _FLAMixer.__init__(self, d_model, {**options, "num_hidden_layers": 2})

    # Same state layout and cache conversion as RWKV6; only the key width is named differently in fla.
    def _key_dim(self) -> int:
        return self.attn.head_dim

    def _call(self, x: Tensor, cache: Any, use_cache: bool) -> Tensor:
        # Returns (o, attentions, cache, v_first); as its own first layer, v_first is its own v.
        return self.attn(x, past_key_values=cache, use_cache=use_cache)[0]


def build_gla(d_model: int, **options: Any) -> GLA:
    """Factory of the ``gla`` kind."""
    return GLA(d_model, **options)


def build_rwkv6(d_model: int, **options: Any) -> RWKV6:
    """Factory of the ``rwkv6`` kind."""
    return RWKV6(d_model, **options)


def build_rwkv7(d_model: int, **options: Any) -> RWKV7:
    """Factory of the ``rwkv7`` kind."""
    return RWKV7(d_model, **options)


__all__ = ["GLA", "GLA_DEFAULTS", "RWKV6", "RWKV6_DEFAULTS", "RWKV7", "RWKV7_DEFAULTS", "build_gla",
           "build_rwkv6", "build_rwkv7", "import_fla_layers", "prepare_fla_for_interpreter"]
