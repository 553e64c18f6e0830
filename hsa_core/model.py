"""The language model composed from a canonical layout spec.

::

    ids (B,T) -> embedding -> for each layer i:
                                  [memories with after_layer == i are built from h]
                                  backbone layer:  h = h + mixer(RMSNorm(h))        (Block)
                                  retrieval layer: h = h + hsa(h, memory, selection) (RetrievalBlock)
                                  optional:        h = h + SwiGLU(RMSNorm(h))
                              [memories with after_layer == L are built last]
              -> RMSNorm -> LM head (tied to the embedding when ``tie_embeddings``) -> logits (B,T,V)

A *shared* selection is computed once per forward call, from the input of the first layer that
reads it; a non-shared one (multi-hop) is recomputed before every reading layer from that layer's
input, each layer with its own retrieval projection.

Everything that carries information across calls lives in :class:`ModelCache`: each mixer's state,
each memory's :class:`~hsa_core.modules.MemoryState` (incremental: only complete chunks are encoded,
the incomplete tail waits in ``pending``) and the absolute position of the next token (the
``q_offset`` of retrieval). Hence processing a sequence in segments, or token by token, gives the
same logits as one full pass.

A memory may be *offloaded* (``offload: true`` in the layout, or ``offload=True`` on
:meth:`HSALanguageModel.init_cache` / :meth:`~HSALanguageModel.generate` /
:func:`hsa_core.generation.prefill`): its K/V live in host memory and each call copies in only the
chunks its selection picked, once per selection (:mod:`hsa_core.modules.offload`); the logits are the
same.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .interfaces import Mixer, MixerState
from .modules import ChunkMemory, MemoryState, Retrieval, RMSNorm, Selection, SwiGLU, read_selected
from .modules.init import apply_init
from .modules.offload import GatherStats
from .plugins import PluginHost, get_host

if TYPE_CHECKING:
    from .layout.typed import LayerSpec, MemoryGroup, ResolvedSpec, SelectionGroup

__all__ = ["Block", "HSALanguageModel", "ModelCache", "ModelOutput", "RetrievalBlock", "load_pretrained"]


# --------------------------------------------------------------------------------------------------
# Cache and output
# --------------------------------------------------------------------------------------------------

@dataclass
class ModelCache:
    """Everything a model carries from one call to the next (batch first in every tensor).

    Attributes:
        mixer_states: one entry per layer: the mixer's state dict for backbone layers, ``None`` for
            retrieval layers (their context is the memory).
        memories: memory name -> :class:`MemoryState` (keys/values/landmarks of complete chunks plus
            the pending incomplete chunk).
        position: absolute position of the next token (tokens seen so far).
    """

    mixer_states: list[MixerState | None]
    memories: dict[str, MemoryState] = field(default_factory=dict)
    position: int = 0

    def to(self, *args: Any, **kwargs: Any) -> ModelCache:
        """Move/cast every tensor (``Tensor.to`` arguments)."""
        states = [None if s is None else {k: v.to(*args, **kwargs) for k, v in s.items()}
                  for s in self.mixer_states]
        return ModelCache(states, {k: m.to(*args, **kwargs) for k, m in self.memories.items()}, self.position)

    def select(self, index: Tensor | slice) -> ModelCache:
        """Keep batch rows ``index`` (e.g. to drop finished sequences)."""
        states = [None if s is None else {k: v[index] for k, v in s.items()} for s in self.mixer_states]
        return ModelCache(states, {k: m.select(index) for k, m in self.memories.items()}, self.position)

    def nbytes(self) -> int:
        """Bytes held on the compute device (recurrent states + chunk memories, less offloaded K/V)."""
        total = sum(t.numel() * t.element_size() for s in self.mixer_states if s for t in s.values())
        return total + sum(m.nbytes() for m in self.memories.values())

    def host_nbytes(self) -> int:
        """Bytes of offloaded chunk K/V in host memory (0 when no memory is offloaded)."""
        return sum(m.host_nbytes() for m in self.memories.values())

    def take_gather_stats(self) -> GatherStats:
        """The offloaded memories' host -> device gathers since last taken, summed (zeroed after)."""
        total = GatherStats()
        for memory in self.memories.values():
            total.add(memory.take_gather_stats())
        return total


class ModelOutput(NamedTuple):
    """``logits`` ``(B, T, V)``; ``cache`` a :class:`ModelCache` when asked for, else ``None``."""

    logits: Tensor
    cache: ModelCache | None


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------

class _MLP(nn.Module):
    """Pre-norm SwiGLU sub-block (its residual is added by the owner)."""

    def __init__(self, d_model: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)
        self.ffn = SwiGLU(d_model, hidden)

    def forward(self, h: Tensor) -> Tensor:
        return self.ffn(self.norm(h))


class Block(nn.Module):
    """``h + mixer(RMSNorm(h))``, then optionally ``h + SwiGLU(RMSNorm(h))`` (mamba-ssm's Block habit:
    the mixer knows nothing about norms or residuals, which is what makes any mixer composable).

    Args:
        d_model: width.
        mixer: any :class:`~hsa_core.interfaces.Mixer`.
        mlp_hidden: SwiGLU hidden size, ``None`` = no MLP sub-block.
        norm_eps: RMSNorm epsilon.
    """

    def __init__(self, d_model: int, mixer: Mixer, *, mlp_hidden: int | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.mlp = _MLP(d_model, mlp_hidden, norm_eps) if mlp_hidden else None

    def forward(self, h: Tensor, state: MixerState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """h ``(B, T, d)`` -> (``(B, T, d)``, new mixer state or ``None``)."""
        x = self.norm(h)
        if state is not None and h.shape[1] == 1:
            # Decoding: mixers may have a cheaper single-token update (same result by contract).
            y, new_state = self.mixer.step(x[:, 0], state)
            y = y.unsqueeze(1)
        else:
            y, new_state = self.mixer(x, state, return_state=return_state)
        h = h + y.to(h.dtype)
        if self.mlp is not None:
            h = h + self.mlp(h)
        return h, new_state

    def forward_resetting(self, h: Tensor, state: MixerState | None, every: int, *,
                          return_state: bool = False) -> tuple[Tensor, MixerState | None]:
        """:meth:`forward` with the mixer restarting from its zero state every ``every`` tokens.

        The first segment continues from ``state``; every later one starts from the zero state, so they
        are independent and run as one call with the segments folded into the batch,
        ``(B, m * every, d) -> (B * m, every, d)``, plus one call for a shorter tail (and one for the
        first segment when it continues a given state). The outputs equal those of one call per segment
        with the state replaced by the zero state at each boundary; the mixer needs nothing more than
        its contract (a call without a state starts from the zero state).

        Args:
            h: ``(B, T, d)``.
            state: the mixer state before ``h`` (``None``: the zero state).
            every: segment length in tokens (>= 1).
            return_state: return the state after the last token (the last segment's).
        """
        B, T, d = h.shape
        if every >= T:
            return self(h, state, return_state=return_state)
        want = return_state or state is not None
        pieces: list[Tensor] = []
        start = 0
        if state is not None:  # the first segment continues the given state; its final state is dropped
            pieces.append(self(h[:, :every], state)[0])
            start = every
        m = (T - start) // every
        end = start + m * every
        new_state = None
        if m:
            y, folded = self(h[:, start:end].reshape(B * m, every, d), None, return_state=want and end == T)
            pieces.append(y.reshape(B, m * every, d))
            if folded is not None:  # row b*m + j of the folded batch is segment j of sequence b
                new_state = {k: v.unflatten(0, (B, m))[:, -1] for k, v in folded.items()}
        if end < T:
            y, new_state = self(h[:, end:], None, return_state=want)
            pieces.append(y)
        return torch.cat(pieces, 1), (new_state if want else None)


class RetrievalBlock(nn.Module):
    """``h + layer(h, memory, selection)`` (the layer norms its own input), then an optional MLP.

    A multi-hop layer (non-shared selection) owns its :class:`~hsa_core.modules.Retrieval` here.
    A layer with ``residual = False`` (an ``hsa`` option) is not added to the stream itself; it only
    feeds the MLP: ``h + MLP(RMSNorm(h + layer(h)))`` (the authors' HSA+MLP sub-layer).
    """

    def __init__(self, d_model: int, layer: nn.Module, *, retrieval: Retrieval | None = None,
                 mlp_hidden: int | None = None, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.layer = layer
        self.retrieval = retrieval
        self.mlp = _MLP(d_model, mlp_hidden, norm_eps) if mlp_hidden else None
        # The contract passes ``position=``; layers written before it was added do not take it.
        self._pass_position = _accepts(layer.forward, "position")

    def forward(self, h: Tensor, memory: MemoryState, selection: Selection, position: int = 0) -> Tensor:
        """h ``(B, T, d)`` at absolute positions ``position..position+T-1``, the memory and the selection
        of these T tokens -> ``(B, T, d)``. A layer with ``residual = False`` (the published HSA-after-MLP
        variant) feeds its residual sum to the MLP but adds only the MLP's output to ``h``."""
        if self._pass_position:
            y = h + self.layer(h, memory, selection, position=position).to(h.dtype)
        else:
            y = h + self.layer(h, memory, selection).to(h.dtype)
        if self.mlp is None:
            return y
        if getattr(self.layer, "residual", True):
            return y + self.mlp(y)
        return h + self.mlp(y)


def _accepts(factory: Any, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _make_retrieval(d_model: int, sel: SelectionGroup, mem: MemoryGroup) -> Retrieval:
    return Retrieval(d_model, retrieval_dim=sel.retrieval_dim, retrieval_heads=sel.retrieval_heads,
                     topk=sel.topk, chunk_size=mem.chunk_size, weighting=sel.weighting,
                     gumbel=sel.gumbel, window=sel.window, landmark_norm=sel.landmark_norm,
                     norm_eps=sel.norm_eps)


def _make_memory(d_model: int, mem: MemoryGroup) -> ChunkMemory:
    enc = mem.encoder
    return ChunkMemory(d_model, chunk_size=mem.chunk_size, kv_heads=mem.kv_heads, head_dim=mem.head_dim,
                       landmark_dim=mem.landmark_dim, retrieval_heads=mem.retrieval_heads, landmark=mem.landmark,
                       encoder_layers=enc.layers, encoder_heads=enc.heads, encoder_mlp_hidden=enc.mlp_hidden,
                       encoder_kv_heads=enc.kv_heads, encoder_qkv_bias=enc.qkv_bias, chunk_norm=mem.chunk_norm,
                       k_norm=mem.k_norm, norm_eps=mem.norm_eps)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

class HSALanguageModel(nn.Module):
    """A causal language model of backbone and retrieval layers sharing chunk memories.

    Build it with :meth:`from_spec` (or :meth:`from_pretrained`); ``spec`` is a layout, raw, canonical
    or typed (it is resolved again: :func:`hsa_core.layout.resolve` is idempotent), and the blocks are
    built from its typed form (:class:`hsa_core.layout.ResolvedSpec`).

    Attributes:
        layout: the typed canonical spec it was built from.
        spec: the same as a canonical dict (``layout.to_dict()``, saved with the weights).
        embedding, layers, memories, selections, norm_f, lm_head: the modules. ``selections`` holds
            the shared selections' retrieval projections; multi-hop layers own theirs
            (``layers[i].retrieval``).
    """

    def __init__(self, spec: Mapping[str, Any] | ResolvedSpec, *, host: PluginHost | None = None) -> None:
        from .layout import ResolvedSpec

        super().__init__()
        host = host or get_host()
        layout = ResolvedSpec.resolve(spec, host=host)  # idempotent: a raw layout works too
        self.layout: ResolvedSpec = layout
        self.spec: dict[str, Any] = layout.to_dict()
        m = layout.model
        d, eps = m.d_model, m.norm_eps
        self.d_model, self.vocab_size = d, m.vocab_size
        self.embedding = nn.Embedding(m.vocab_size, d)
        self.memories = nn.ModuleDict({name: _make_memory(d, mem) for name, mem in layout.memories.items()})
        self.selections = nn.ModuleDict({
            name: _make_retrieval(d, sel, layout.memories[sel.memory])
            for name, sel in layout.retrieval.items()
            if sel.shared and any(layer.selection == name for layer in layout.layers)})
        self.layers = nn.ModuleList([self._make_block(layout, layer, host) for layer in layout.layers])
        self.norm_f = RMSNorm(d, eps=eps)
        #: activation checkpointing of every block while training (``hsa train --checkpoint-activations``)
        self.gradient_checkpointing = False
        self.lm_head = nn.Linear(d, m.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=m.init_std)
        if m.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=m.init_std)
        apply_init(self, m.init, std=m.init_std)
        # memories built after i layers, i = 0..L (0 = from the embeddings)
        self._built_after: dict[int, list[str]] = {}
        for name, mem in layout.memories.items():
            self._built_after.setdefault(mem.after_layer, []).append(name)

    @staticmethod
    def _make_block(layout: ResolvedSpec, layer: LayerSpec, host: PluginHost) -> nn.Module:
        """The block of one layer: a backbone :class:`Block` or a :class:`RetrievalBlock`."""
        d, eps = layout.model.d_model, layout.model.norm_eps
        mlp_hidden = layout.model.mlp_hidden if layer.mlp else None
        if not layer.is_retrieval:
            factory = host.backbone_registry().get(layer.kind).factory
            return Block(d, factory(d, **layer.options), mlp_hidden=mlp_hidden, norm_eps=eps)
        sel, mem = layout.selection_of(layer), layout.memory_of(layer)
        factory = host.retrieval_registry().get(layer.kind).factory
        # The memory fixes the geometry a retrieval layer attends over; pass what it accepts.
        derived = {"kv_heads": mem.kv_heads, "head_dim": mem.head_dim, "chunk_size": mem.chunk_size, "norm_eps": eps}
        kwargs = dict(layer.options)
        kwargs.update({k: v for k, v in derived.items() if k not in kwargs and _accepts(factory, k)})
        own = None if sel.shared else _make_retrieval(d, sel, mem)
        return RetrievalBlock(d, factory(d, **kwargs), retrieval=own, mlp_hidden=mlp_hidden, norm_eps=eps)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | ResolvedSpec, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, host: PluginHost | None = None) -> HSALanguageModel:
        """Build from a layout (raw, canonical or typed; it is resolved again, which is idempotent).

        ``device="meta"`` builds without allocating (parameter counts of large models).
        """
        if device is not None:
            with torch.device(device):
                model = cls(spec, host=host)
        else:
            model = cls(spec, host=host)
        if dtype is not None:
            model = model.to(dtype=dtype)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, host: PluginHost | None = None) -> HSALanguageModel:
        """Load a model directory written by :meth:`save_pretrained` (see :mod:`hsa_core.io`)."""
        from .io import load_model

        return load_model(cls, directory, device=device, dtype=dtype, host=host)

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.yaml``, ``config.json`` and ``model.safetensors`` atomically (:mod:`hsa_core.io`)."""
        from .io import save_pretrained

        return save_pretrained(self, directory, overwrite=overwrite)

    # -- introspection --------------------------------------------------------------------------
    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.embedding.weight

    def num_parameters(self) -> int:
        """Distinct parameters (the tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def offloaded_memories(self, offload: bool | None = None) -> dict[str, bool]:
        """Memory name -> offloaded: the layout's ``offload`` flags for ``None``, else ``offload`` for all.

        Raises:
            ValueError: ``offload=True`` for a model without a chunk memory.
        """
        if offload and not self.memories:
            raise ValueError("offload: this model has no chunk memory to offload")
        if offload is None:
            return {n: self.layout.memories[n].offload for n in self.memories}
        return dict.fromkeys(self.memories, bool(offload))

    def init_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None, offload: bool | None = None,
                   reserve_tokens: int = 0) -> ModelCache:
        """The cache before any token (what a full pass starts from).

        Args:
            offload: keep the chunk memories' K/V in host memory (``None``: as the layout says, per
                memory). An offloaded cache is for inference and is continued in place: continue it
                once (from its latest state).
            reserve_tokens: tokens the offloaded buffers are sized for up front (they grow otherwise).
        """
        p = self.embedding.weight
        device = device if device is not None else p.device
        dtype = dtype or p.dtype
        states: list[MixerState | None] = [
            block.mixer.init_state(batch_size, device=device, dtype=dtype) if isinstance(block, Block) else None
            for block in self.layers]
        off = self.offloaded_memories(offload)
        mems = {n: mem.empty_state(batch_size, device=device, dtype=dtype, offload=off[n],
                                   reserve_tokens=reserve_tokens) for n, mem in self.memories.items()}
        return ModelCache(states, mems, 0)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, cache: ModelCache | None = None, *,
                return_cache: bool = False, state_reset_every: int | None = None) -> ModelOutput:
        """Logits for ``input_ids`` ``(B, T)`` (int64), continuing from ``cache`` if given.

        Args:
            input_ids: ``(B, T)`` token ids, ``T >= 1``.
            cache: the state after the tokens before these (from an earlier call with
                ``return_cache=True``); ``None`` = start of the sequence.
            return_cache: return the cache after these tokens (implied when ``cache`` is given).
            state_reset_every: the backbone (mixer) states restart from the zero state every this many
                tokens of ``input_ids`` (the first segment continues ``cache``), while the chunk
                memories and the position carry on (RAMba's training trick, spec section 7: what lies
                further back than that is reachable through HSA only). Equal to one call per segment
                with the mixer states replaced at each boundary, but the mixers run each segment as a
                row of one batched call. ``None``: no reset.

        Returns:
            :class:`ModelOutput` with ``logits`` ``(B, T, V)`` and the new cache (or ``None``). The
            given cache is not modified.
        """
        h, new_cache = self.forward_hidden(input_ids, cache, return_cache=return_cache,
                                           state_reset_every=state_reset_every)
        return ModelOutput(self.lm_head(h), new_cache)

    def forward_hidden(self, input_ids: Tensor, cache: ModelCache | None = None, *,
                       return_cache: bool = False,
                       state_reset_every: int | None = None) -> tuple[Tensor, ModelCache | None]:
        """:meth:`forward` without the LM head: the final-normed hidden states ``(B, T, d)`` and the cache.

        Training uses this with :func:`hsa_core.losses.linear_cross_entropy`, so that the ``(B, T, V)``
        logits are never materialised.
        """
        if state_reset_every is not None and state_reset_every < 1:
            raise ValueError(f"state_reset_every must be >= 1 tokens, got {state_reset_every}")
        keep = cache is not None or return_cache
        position = cache.position if cache is not None else 0
        h = self.embedding(input_ids)
        mems: dict[str, MemoryState] = dict(cache.memories) if cache is not None else {}
        if cache is None and not torch.is_grad_enabled():  # the layout's offload flags (inference only)
            mems = {n: self.memories[n].empty_state(h.shape[0], device=h.device, dtype=h.dtype, offload=True)
                    for n, off in self.offloaded_memories().items() if off}
        states: list[MixerState | None] = [None] * len(self.layers)
        # selection name -> (memory as its readers see it, selection): an offloaded memory is gathered
        # once per selection, for every layer that shares it.
        shared: dict[str, tuple[MemoryState, Selection]] = {}
        layers_spec = self.layout.layers
        # Recompute each block in backward instead of keeping its activations (only while training
        # with gradients: inference and decoding never pay for it).
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()

        self._build_memories(0, h, mems)
        for i, block in enumerate(self.layers):
            if isinstance(block, Block):
                prev = cache.mixer_states[i] if cache is not None else None
                run: Any = block
                if state_reset_every is not None:
                    run = partial(block.forward_resetting, every=state_reset_every)
                if ckpt:
                    h, states[i] = checkpoint(run, h, prev, return_state=keep, use_reentrant=False)
                else:
                    h, states[i] = run(h, prev, return_state=keep)
            else:
                sel_name, mem_name = layers_spec[i].selection, layers_spec[i].memory
                memory = mems[mem_name]
                if block.retrieval is not None:  # multi-hop: select from this layer's own input
                    memory, selection = read_selected(memory, block.retrieval(h, memory, position))
                else:
                    if sel_name not in shared:  # first reader computes it; later readers reuse it
                        shared[sel_name] = read_selected(memory, self.selections[sel_name](h, memory, position))
                    memory, selection = shared[sel_name]
                if ckpt:
                    h = checkpoint(block, h, memory, selection, position, use_reentrant=False)
                else:
                    h = block(h, memory, selection, position)
            self._build_memories(i + 1, h, mems)
        new_cache = ModelCache(states, mems, position + input_ids.shape[1]) if keep else None
        return self.norm_f(h), new_cache

    def _build_memories(self, after: int, h: Tensor, mems: dict[str, MemoryState]) -> None:
        for name in self._built_after.get(after, ()):
            mems[name] = self.memories[name](h, mems.get(name))

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None, return_logits: bool = False,
                 offload: bool | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Continue ``input_ids`` ``(B, T)`` by up to ``max_new_tokens`` tokens.

        Prefill runs the prompt in one call; then each token is one call on the cache (recurrent
        states plus incremental chunk memory), so the cost per token does not grow with the prompt
        except for retrieval over the memory. Runs in eval mode (no Gumbel noise), then restores the
        previous mode.

        Args:
            do_sample: sample from ``softmax(logits / temperature)`` (restricted to the ``top_k``
                largest when given); greedy argmax otherwise.
            generator: RNG for sampling (reproducible generation).
            eos_token_id: a sequence stops after producing it (later slots repeat it); generation ends
                when every sequence has stopped.
            return_logits: also return the logits each new token was chosen from, ``(B, N, V)``.
            offload: keep the chunk memories' K/V in host memory (``None``: as the layout says).

        Returns:
            ``(B, T + N)`` ids (``N <= max_new_tokens``), and the logits when ``return_logits``.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        was_training = self.training
        self.eval()
        try:
            out_tokens: list[Tensor] = []
            out_logits: list[Tensor] = []
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if max_new_tokens:
                cache = None if offload is None else self.init_cache(
                    input_ids.shape[0], offload=offload, reserve_tokens=input_ids.shape[1] + max_new_tokens)
                out = self(input_ids, cache, return_cache=True)
                for step in range(max_new_tokens):
                    logits = out.logits[:, -1].float()
                    token = self._pick(logits, do_sample, temperature, top_k, generator)
                    if eos_token_id is not None:
                        token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                        finished |= token == eos_token_id
                    out_tokens.append(token)
                    out_logits.append(logits)
                    if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                        break
                    out = self(token[:, None], out.cache, return_cache=True)
        finally:
            self.train(was_training)
        ids = torch.cat([input_ids, torch.stack(out_tokens, 1)], 1) if out_tokens else input_ids
        if return_logits:
            logits_t = (torch.stack(out_logits, 1) if out_logits
                        else input_ids.new_zeros((input_ids.shape[0], 0, self.vocab_size), dtype=torch.float32))
            return ids, logits_t
        return ids

    @staticmethod
    def _pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None,
              generator: torch.Generator | None) -> Tensor:
        """Next token ``(B,)`` from logits ``(B, V)``."""
        if not do_sample:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def load_pretrained(directory: str | Path, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, host: PluginHost | None = None) -> HSALanguageModel:
    """Load a model directory written by ``save_pretrained``: :meth:`HSALanguageModel.from_pretrained`."""
    return HSALanguageModel.from_pretrained(directory, device=device, dtype=dtype, host=host)
