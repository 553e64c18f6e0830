"""Contract checks for backbones (mixers): run them on your own backbone factory.

Every backbone registered with ``hsa_register_backbones`` must follow the
:class:`hsa_core.interfaces.Mixer` contract. The checks here test that contract on a small random
input, so a plugin author can put one line in their test suite::

    from hsa_core.testing import check_mixer
    from my_rnn import MyRNNMixer

    def test_my_rnn_follows_the_mixer_contract():
        check_mixer(MyRNNMixer, d_model=32, options={"expand": 2}, batch=2, seq_len=12)

``check_mixer`` builds the mixer with ``factory(d_model, **options)`` and runs, in order:

=========================  ============================================================================
check                      what must hold
=========================  ============================================================================
``check_forward_shape``    ``mixer(x)`` returns ``(y, None)`` with ``y`` of shape ``(B, T, d_model)`` in
                           ``x``'s dtype; ``return_state=True`` returns a state dict
``check_state_layout``     ``init_state(B)`` is a flat ``dict[str, Tensor]``, every tensor batch-first;
                           states returned by ``forward`` have the same keys and batch-first tensors,
                           and hold no more memory than their own tensors (no view into the step's
                           activations)
``check_gradients``        a backward pass gives finite gradients to the input and to every parameter
                           that requires one
``check_segments``         processing ``x`` in segments (several random splits, carrying the state)
                           gives the full pass's outputs and final state; the state given to each
                           call is not modified in place
``check_step``             ``step`` token by token from ``init_state`` gives the full pass's outputs;
                           the state given to each step is not modified in place
``check_causality``        changing the input at positions ``>= t`` leaves outputs ``< t`` unchanged
``check_save_load``        ``state_dict`` loaded into a freshly built mixer gives identical outputs
=========================  ============================================================================

Each check is also a public function taking a built mixer (``check_save_load`` takes the factory
too) and raises ``AssertionError`` with a message that says what differed and by how much.
Mixers run in ``eval()`` mode during the checks (dropout off) and in fp32 by default; pass ``atol``
and ``rtol`` to loosen the comparisons for mixers whose chunked and recurrent paths round
differently (fp32 chunked scans typically agree to ``1e-5``–``1e-4``). Complex-valued states are
compared with the same tolerances on the modulus of the difference.

Retrieval layers (``hsa_register_retrieval_layers``) have their own contract and checker,
:func:`check_retrieval`.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..interfaces import Mixer, MixerState

__all__ = [
    "assert_states_close",
    "check_causality",
    "check_forward_shape",
    "check_gradients",
    "check_mixer",
    "check_retrieval",
    "check_save_load",
    "check_segments",
    "check_state_layout",
    "check_step",
    "random_splits",
]

Factory = Callable[..., Mixer]


# -- helpers -------------------------------------------------------------------------------------
def _name(mixer: torch.nn.Module) -> str:
    return type(mixer).__name__


def _fmt(value: complex | float) -> str:
    return f"{value:.6g}" if not isinstance(value, complex) else f"{value.real:.6g}{value.imag:+.6g}j"


def _assert_close(actual: Tensor, expected: Tensor, what: str, *, atol: float, rtol: float) -> None:
    """``allclose`` with a message naming the largest difference and where it is.

    Real tensors are compared in float64, complex ones in complex128 (``|a - e|`` is the modulus).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.is_complex() or expected.is_complex():
        a, e = actual.detach().to(torch.complex128), expected.detach().to(torch.complex128)
    else:
        a, e = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(a).all():
        raise AssertionError(f"{what}: non-finite values in the result")
    if a.numel() == 0:
        return
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    if bool((diff > bound).any()):
        worst = int(torch.argmax(diff - bound))
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
        raise AssertionError(
            f"{what}: max |diff| = {diff.max().item():.3e} (atol={atol:g}, rtol={rtol:g}); "
            f"worst at index {index}: got {_fmt(a[index].item())}, expected {_fmt(e[index].item())}"
        )


def assert_states_close(actual: MixerState, expected: MixerState, what: str, *, atol: float = 1e-5,
                        rtol: float = 1e-4) -> None:
    """Two state dicts have the same keys and close tensors (floating or complex, with tolerances)
    or equal tensors (integer and bool); a failure names the max difference and where it is."""
    if set(actual) != set(expected):
        raise AssertionError(f"{what}: state keys {sorted(actual)} != expected {sorted(expected)}")
    for key in sorted(expected):
        a, e = actual[key], expected[key]
        inexact = any(t.is_floating_point() or t.is_complex() for t in (a, e))
        if inexact:
            _assert_close(a, e, f"{what}: state[{key!r}]", atol=atol, rtol=rtol)
        elif a.shape != e.shape:
            raise AssertionError(f"{what}: state[{key!r}] shape {tuple(a.shape)} != expected {tuple(e.shape)}")
        elif not torch.equal(a, e):
            _assert_close(a, e, f"{what}: state[{key!r}] (exact)", atol=0.0, rtol=0.0)


def _snapshot(state: Any) -> Any:
    """A deep copy of the tensors of a state (dict), memory state or selection, to detect in-place edits."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _snapshot(v) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple (Selection)
        return type(state)(*(_snapshot(v) for v in state))
    if dataclasses.is_dataclass(state) and not isinstance(state, type):  # MemoryState
        return dataclasses.replace(state, **{f.name: _snapshot(getattr(state, f.name))
                                             for f in dataclasses.fields(state)})
    return state


def _assert_unmodified(before: Any, after: Any, what: str) -> None:
    """Contract rule: the state (or memory, selection) given to a call is not modified in place."""
    if isinstance(before, Tensor):
        if before.shape != after.shape or not torch.equal(before, after.detach()):
            if before.shape == after.shape and (before.is_floating_point() or before.is_complex()):
                diff = (after.detach().to(before.dtype) - before).abs().max().item()
                raise AssertionError(f"{what} was modified in place (max |change| = {diff:.3e}); return a new "
                                     "state instead of writing into the given one")
            raise AssertionError(f"{what} was modified in place; return a new state instead of writing into "
                                 "the given one")
    elif isinstance(before, dict):
        if set(before) != set(after):
            raise AssertionError(f"{what}: keys were added or removed in place ({sorted(before)} -> "
                                 f"{sorted(after)}); return a new dict")
        for k in before:
            _assert_unmodified(before[k], after[k], f"{what}[{k!r}]")
    elif isinstance(before, tuple) and hasattr(before, "_fields"):
        for name, b, a in zip(before._fields, before, after):
            _assert_unmodified(b, a, f"{what}.{name}")
    elif dataclasses.is_dataclass(before) and not isinstance(before, type):
        for f in dataclasses.fields(before):
            _assert_unmodified(getattr(before, f.name), getattr(after, f.name), f"{what}.{f.name}")


def random_splits(seq_len: int, n_segments: int, generator: random.Random) -> list[int]:
    """Segment lengths (each ``>= 1``) summing to ``seq_len``; ``n_segments`` is capped at ``seq_len``."""
    n_segments = max(1, min(n_segments, seq_len))
    cuts = sorted(generator.sample(range(1, seq_len), n_segments - 1))
    bounds = [0, *cuts, seq_len]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _device_dtype(mixer: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in mixer.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _input(mixer: Mixer, batch: int, seq_len: int, seed: int) -> Tensor:
    device, dtype = _device_dtype(mixer)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, mixer.d_model, generator=g).to(device=device, dtype=dtype)


def _run_segments(mixer: Mixer, x: Tensor, lengths: Sequence[int],
                  state: MixerState | None) -> tuple[Tensor, MixerState]:
    """Run ``x`` segment by segment, carrying the state; returns the concatenated outputs."""
    outputs, start = [], 0
    name = _name(mixer)
    for n in lengths:
        given = state
        before = _snapshot(given) if given is not None else None
        y, state = mixer(x[:, start:start + n], given, return_state=True)
        if given is not None:
            _assert_unmodified(before, given, f"{name}: the state given to forward (rule 3)")
        assert state is not None
        outputs.append(y)
        start += n
    assert state is not None
    return torch.cat(outputs, dim=1), state


# -- the checks ----------------------------------------------------------------------------------
def check_forward_shape(mixer: Mixer, x: Tensor) -> None:
    """``mixer(x)`` gives ``(y (B, T, d_model), None)`` in ``x``'s dtype; ``return_state`` gives a dict.

    Args:
        x: ``(B, T, d_model)`` input.
    """
    name = _name(mixer)
    if not isinstance(mixer, Mixer):
        raise AssertionError(f"{name} is not a hsa_core.interfaces.Mixer subclass")
    if getattr(mixer, "d_model", None) != x.shape[-1]:
        raise AssertionError(f"{name}.d_model = {getattr(mixer, 'd_model', None)!r}, expected {x.shape[-1]}")
    with torch.no_grad():
        out = mixer(x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"{name}.forward must return a (y, state) tuple, got {type(out).__name__}")
        y, state = out
        if state is not None:
            raise AssertionError(f"{name}.forward(x) without state or return_state must return state None")
        if tuple(y.shape) != tuple(x.shape):
            raise AssertionError(f"{name}: output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
        if y.dtype != x.dtype:
            raise AssertionError(f"{name}: output dtype {y.dtype} != input dtype {x.dtype}")
        if not torch.isfinite(y).all():
            raise AssertionError(f"{name}: non-finite values in the output")
        _, state = mixer(x, return_state=True)
        if not isinstance(state, dict):
            raise AssertionError(
                f"{name}.forward(x, return_state=True) must return a state dict, got {state!r}")


def _check_layout(state: Any, batch: int, what: str) -> None:
    if not isinstance(state, dict) or not state:
        raise AssertionError(
            f"{what}: the state must be a non-empty dict[str, Tensor], got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise AssertionError(
                f"{what}: state entry {key!r} is not a str -> Tensor pair (flat dict required)")
        if value.dim() == 0 or value.shape[0] != batch:
            raise AssertionError(
                f"{what}: state[{key!r}] has shape {tuple(value.shape)}; every state tensor must have the "
                f"batch ({batch}) as its first dimension"
            )


def _check_owns_memory(state: MixerState, what: str) -> None:
    """The storages behind a state hold nothing but the state's own tensors.

    A state taken as a slice of a larger tensor (the last ``W`` inputs of a concatenation, the last of
    all chunk states) is a view that keeps the whole tensor alive: in a segment-wise prefill every
    carried state then pins that segment's activations (megabytes per layer at long segments).
    """
    storages: dict[int, int] = {}
    own = 0
    for value in state.values():
        if value.device.type == "meta":
            return
        storage = value.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        own += value.numel() * value.element_size()
    held = sum(storages.values())
    if held > own:
        big = [k for k, v in state.items()
               if v.untyped_storage().nbytes() > v.numel() * v.element_size()]
        raise AssertionError(
            f"{what}: the state's tensors keep {held:,} bytes alive for {own:,} bytes of state; "
            f"state{big} are views into larger tensors: copy them (.clone() or .contiguous()) "
            "so that a carried state does not pin the activations it was sliced from")


def check_state_layout(mixer: Mixer, x: Tensor) -> None:
    """``init_state`` and the states ``forward`` returns are flat dicts of batch-first tensors, and a
    returned state holds no more memory than its own tensors.

    Checked at the batch size of ``x`` and at a different one (so that a dimension equal to the batch
    by accident is not taken for the batch), and on the ``meta`` device (used for memory estimates).
    """
    name = _name(mixer)
    batch = x.shape[0]
    device, dtype = _device_dtype(mixer)
    init = mixer.init_state(batch, device=device, dtype=dtype)
    _check_layout(init, batch, f"{name}.init_state({batch})")
    other = mixer.init_state(batch + 3, device=device, dtype=dtype)
    _check_layout(other, batch + 3, f"{name}.init_state({batch + 3})")
    for key in init:
        if tuple(other[key].shape[1:]) != tuple(init[key].shape[1:]):
            raise AssertionError(
                f"{name}.init_state: state[{key!r}] changes beyond the batch dimension with the batch "
                f"size: {tuple(init[key].shape)} vs {tuple(other[key].shape)}")
    meta = mixer.init_state(batch, device="meta")
    if set(meta) != set(init):
        raise AssertionError(
            f"{name}.init_state on the meta device gives keys {sorted(meta)} != {sorted(init)}")
    with torch.no_grad():
        _, state = mixer(x, return_state=True)
        _check_layout(state, batch, f"{name}.forward(return_state=True)")
        _check_owns_memory(state, f"{name}.forward(return_state=True)")
        if set(state) != set(init):
            raise AssertionError(f"{name}: forward returns state keys {sorted(state)} but init_state gives "
                                 f"{sorted(init)}")
        _, state2 = mixer(x[:, :1], init)
        _check_layout(state2, batch, f"{name}.forward(x, init_state)")
        _check_owns_memory(state2, f"{name}.forward(x, init_state)")
    if mixer.state_size(batch, x.shape[1]) < 0:
        raise AssertionError(f"{name}.state_size must be >= 0")


def _check_gradients(name: str, module: torch.nn.Module, input_grad: Tensor | None) -> None:
    """After a backward: the input gradient and every trainable parameter's gradient exist and are
    finite; then the module's gradients are cleared."""
    if input_grad is None or not torch.isfinite(input_grad).all():
        raise AssertionError(f"{name}: the input gradient is missing or not finite")
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise AssertionError(f"{name}: no gradient reaches parameters {missing}")
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise AssertionError(f"{name}: non-finite gradients in parameters {bad}")
    module.zero_grad(set_to_none=True)


def check_gradients(mixer: Mixer, x: Tensor) -> None:
    """A backward pass reaches the input and every parameter that requires a gradient, all finite."""
    name = _name(mixer)
    mixer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y, _ = mixer(x)
    # A random projection so that no gradient is zero by symmetry.
    g = torch.Generator().manual_seed(1234)
    weight = torch.randn(y.shape, generator=g).to(device=y.device, dtype=y.dtype)
    (y * weight).sum().backward()
    _check_gradients(name, mixer, x.grad)


def check_segments(mixer: Mixer, x: Tensor, *, n_splits: int = 3, seed: int = 0, atol: float = 1e-5,
                   rtol: float = 1e-4) -> None:
    """Segment-wise processing with a carried state equals the full pass (outputs and final state).

    Tries ``n_splits`` random splits (2 to 4 segments), starting once from ``state=None`` with
    ``return_state=True`` and once from ``init_state``, plus a split into a first token and the rest.
    """
    name = _name(mixer)
    batch, seq_len = x.shape[:2]
    if seq_len < 2:
        raise AssertionError("check_segments needs seq_len >= 2")
    device, dtype = _device_dtype(mixer)
    rng = random.Random(seed)
    with torch.no_grad():
        y_full, state_full = mixer(x, return_state=True)
        assert state_full is not None
        splits = [[1, seq_len - 1]]
        splits += [random_splits(seq_len, rng.randint(2, 4), rng) for _ in range(n_splits)]
        for i, lengths in enumerate(splits):
            start: MixerState | None = None
            if i % 2 == 1:
                start = mixer.init_state(batch, device=device, dtype=dtype)
            y, state = _run_segments(mixer, x, lengths, start)
            what = f"{name}: segments {lengths} vs full pass"
            _assert_close(y, y_full, f"{what}: outputs", atol=atol, rtol=rtol)
            assert_states_close(state, state_full, f"{what}: final state", atol=atol, rtol=rtol)


def check_step(mixer: Mixer, x: Tensor, *, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """``step`` token by token from ``init_state`` equals the full pass (outputs and final state)."""
    name = _name(mixer)
    batch, seq_len = x.shape[:2]
    device, dtype = _device_dtype(mixer)
    with torch.no_grad():
        y_full, state_full = mixer(x, return_state=True)
        assert state_full is not None
        state = mixer.init_state(batch, device=device, dtype=dtype)
        outputs = []
        for t in range(seq_len):
            before = _snapshot(state)
            given = state
            y_t, state = mixer.step(x[:, t], given)
            _assert_unmodified(before, given, f"{name}: the state given to step (rule 3)")
            if tuple(y_t.shape) != (batch, x.shape[-1]):
                raise AssertionError(
                    f"{name}.step: output shape {tuple(y_t.shape)} != {(batch, x.shape[-1])}")
            outputs.append(y_t)
        y = torch.stack(outputs, dim=1)
        _assert_close(y, y_full, f"{name}: step-by-step vs full pass: outputs", atol=atol, rtol=rtol)
        assert_states_close(state, state_full, f"{name}: step-by-step vs full pass: final state",
                            atol=atol, rtol=rtol)


def check_causality(mixer: Mixer, x: Tensor, *, positions: Sequence[int] | None = None,
                    atol: float = 1e-6) -> None:
    """Changing the input at positions ``>= t`` leaves the outputs at positions ``< t`` unchanged.

    Skipped for mixers that declare ``causal = False``.
    """
    if not getattr(mixer, "causal", True):
        return
    name = _name(mixer)
    seq_len = x.shape[1]
    if positions is None:
        positions = sorted({1, seq_len // 2, seq_len - 1} - {0})
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        y, _ = mixer(x)
        for t in positions:
            x2 = x.clone()
            noise = torch.randn(x2[:, t:].shape, generator=g).to(device=x.device, dtype=x.dtype)
            x2[:, t:] = x2[:, t:] + 3.0 * noise
            y2, _ = mixer(x2)
            what = f"{name}: causality: outputs before {t} after changing inputs >= {t}"
            _assert_close(y2[:, :t], y[:, :t], what, atol=atol, rtol=0.0)
            if torch.allclose(y2[:, t:], y[:, t:]):
                raise AssertionError(f"{name}: outputs at positions >= {t} ignore the inputs there")


def check_save_load(factory: Factory, mixer: Mixer, x: Tensor, *, d_model: int,
                    options: dict[str, Any] | None = None, atol: float = 0.0) -> None:
    """The ``state_dict`` loaded strictly into a fresh ``factory(d_model, **options)`` gives equal outputs."""
    name = _name(mixer)
    device, dtype = _device_dtype(mixer)
    fresh = factory(d_model, **(options or {})).to(device=device, dtype=dtype)
    result = fresh.load_state_dict(mixer.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict raises first; kept for custom modules
        raise AssertionError(f"{name}: state_dict mismatch: {result}")
    fresh.eval()
    with torch.no_grad():
        y, _ = mixer(x)
        y2, _ = fresh(x)
    _assert_close(y2, y, f"{name}: outputs after loading the state_dict into a fresh instance", atol=atol,
                  rtol=0.0)


ALL_CHECKS = ("forward_shape", "state_layout", "gradients", "segments", "step", "causality", "save_load")


def check_mixer(factory: Factory, *, d_model: int = 32, options: dict[str, Any] | None = None, batch: int = 2,
                seq_len: int = 12, atol: float = 1e-5, rtol: float = 1e-4, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", seed: int = 0,
                checks: Sequence[str] = ALL_CHECKS) -> Mixer:
    """Build ``factory(d_model, **options)`` and run the contract checks on it.

    Args:
        factory: a backbone factory, ``factory(d_model, **options) -> Mixer`` (a Mixer class works).
        d_model: model width.
        options: keyword options for the factory.
        batch, seq_len: shape of the random input ``(batch, seq_len, d_model)``.
        atol, rtol: tolerances of the segment/step comparisons (causality uses ``atol`` alone).
        dtype, device: where the mixer and the input live.
        seed: seeds the parameters (through ``torch.manual_seed``), the input and the random splits.
        checks: a subset of :data:`ALL_CHECKS` to run (default: all).

    Returns:
        The built mixer (in eval mode), for further family-specific checks.

    Raises:
        AssertionError: the first check that fails, with a message saying what differed.
    """
    unknown = set(checks) - set(ALL_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(ALL_CHECKS)}")
    torch.manual_seed(seed)
    mixer = factory(d_model, **(options or {}))
    if not isinstance(mixer, Mixer):
        raise AssertionError(f"factory returned {type(mixer).__name__}, not a hsa_core.interfaces.Mixer")
    mixer = mixer.to(device=device, dtype=dtype).eval()
    x = _input(mixer, batch, seq_len, seed)
    if "forward_shape" in checks:
        check_forward_shape(mixer, x)
    if "state_layout" in checks:
        check_state_layout(mixer, x)
    if "gradients" in checks:
        check_gradients(mixer, x)
    if "segments" in checks:
        check_segments(mixer, x, seed=seed, atol=atol, rtol=rtol)
    if "step" in checks:
        check_step(mixer, x, atol=atol, rtol=rtol)
    if "causality" in checks:
        check_causality(mixer, x, atol=max(atol, 1e-6))
    if "save_load" in checks:
        torch.manual_seed(seed + 1)  # the fresh instance gets different initial weights
        check_save_load(factory, mixer, x, d_model=d_model, options=options)
    return mixer


# -- retrieval layers ------------------------------------------------------------------------------
RETRIEVAL_CHECKS = ("forward_shape", "gradients", "segments", "causality", "save_load")


def _memory_and_selection(d_model: int, *, kv_heads: int, head_dim: int, chunk_size: int, topk: int,
                          batch: int, seq_len: int, seed: int, device: torch.device | str,
                          dtype: torch.dtype) -> tuple[Any, Any, Tensor, Tensor]:
    """A real chunk memory over random source states, its selection module and the inputs.

    Returns ``(memory module, retrieval module, source h (B, T, d), x (B, T, d))``.
    """
    from ..modules import ChunkMemory, Retrieval

    lmk_dim = 16
    memory = ChunkMemory(d_model, chunk_size=chunk_size, kv_heads=kv_heads, head_dim=head_dim,
                         landmark_dim=lmk_dim, landmark="mean", encoder_layers=0)
    retrieval = Retrieval(d_model, retrieval_dim=lmk_dim, topk=topk, chunk_size=chunk_size)
    memory, retrieval = memory.to(device=device, dtype=dtype).eval(), retrieval.to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(seed + 7)
    h = torch.randn(batch, seq_len, d_model, generator=g).to(device=device, dtype=dtype)
    x = torch.randn(batch, seq_len, d_model, generator=g).to(device=device, dtype=dtype)
    return memory, retrieval, h, x


def _call_layer(layer: torch.nn.Module, x: Tensor, memory: Any, selection: Any, position: int) -> Tensor:
    """One call, checking that the memory and the selection are not modified in place."""
    name = _name(layer)
    mem_before, sel_before = _snapshot(memory), _snapshot(selection)
    y = layer(x, memory, selection, position=position)
    _assert_unmodified(mem_before, memory, f"{name}: the memory state given to forward")
    _assert_unmodified(sel_before, selection, f"{name}: the selection given to forward")
    if not isinstance(y, Tensor):
        raise AssertionError(f"{name}.forward must return a tensor, got {type(y).__name__}")
    return y


def check_retrieval(factory: Callable[..., torch.nn.Module], *, d_model: int = 32,
                    options: dict[str, Any] | None = None, kv_heads: int = 2, head_dim: int = 8,
                    chunk_size: int = 4, topk: int = 2, batch: int = 2, seq_len: int = 19, atol: float = 1e-5,
                    rtol: float = 1e-4, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    seed: int = 0, checks: Sequence[str] = RETRIEVAL_CHECKS) -> torch.nn.Module:
    """Build ``factory(d_model, kv_heads=, head_dim=, chunk_size=, **options)`` and check the
    retrieval-layer contract against a real chunk memory and selection.

    The contract (``docs/plugins.md``): ``forward(x, memory, selection, *, position) -> y`` where ``x``
    is ``(B, T, d_model)`` at absolute positions ``position..position+T-1``, ``memory`` a
    :class:`~hsa_core.modules.MemoryState` holding every chunk completed before the end of ``x``,
    ``selection`` the :class:`~hsa_core.modules.Selection` of these ``T`` tokens; ``y`` is
    ``(B, T, d_model)``. The checks:

    =================  ===================================================================================
    ``forward_shape``  ``forward`` accepts ``position=``; ``y`` is ``(B, T, d_model)`` in ``x``'s dtype,
                       finite; the memory and the selection given are not modified in place
    ``gradients``      finite gradients reach ``x`` and every parameter that requires one
    ``segments``       segments of ``x`` (with their ``position``, their rows of the selection and the
                       memory as it stands at the end of the segment) give the full pass's outputs
    ``causality``      changing ``x`` at positions ``>= t`` leaves outputs ``< t`` unchanged
    ``save_load``      ``state_dict`` loaded into a fresh instance gives identical outputs
    =================  ===================================================================================

    Returns:
        The built layer (eval mode).

    Raises:
        AssertionError: the first check that fails, saying what differed and by how much.
    """
    import inspect

    from ..modules import Selection

    unknown = set(checks) - set(RETRIEVAL_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(RETRIEVAL_CHECKS)}")
    torch.manual_seed(seed)
    kwargs = {"kv_heads": kv_heads, "head_dim": head_dim, "chunk_size": chunk_size, **(options or {})}
    layer = factory(d_model, **kwargs).to(device=device, dtype=dtype).eval()
    name = _name(layer)
    params = inspect.signature(layer.forward).parameters
    if "position" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"{name}.forward must accept the keyword 'position' (the absolute position of x[:, 0])")
    mem_mod, ret_mod, h, x = _memory_and_selection(d_model, kv_heads=kv_heads, head_dim=head_dim,
                                                   chunk_size=chunk_size, topk=topk, batch=batch,
                                                   seq_len=seq_len, seed=seed, device=device, dtype=dtype)
    with torch.no_grad():
        memory = mem_mod(h)
        selection = ret_mod(x, memory, 0)
        y_full = _call_layer(layer, x, memory, selection, 0)
    if "forward_shape" in checks:
        if tuple(y_full.shape) != tuple(x.shape):
            raise AssertionError(f"{name}: output shape {tuple(y_full.shape)} != input shape {tuple(x.shape)}")
        if y_full.dtype != x.dtype:
            raise AssertionError(f"{name}: output dtype {y_full.dtype} != input dtype {x.dtype}")
        if not torch.isfinite(y_full).all():
            raise AssertionError(f"{name}: non-finite values in the output")
    if "gradients" in checks:
        layer.zero_grad(set_to_none=True)
        xg = x.detach().clone().requires_grad_(True)
        with torch.no_grad():
            sel = ret_mod(xg.detach(), memory, 0)
        y = layer(xg, memory, sel, position=0)
        weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 3)).to(y)
        (y * weight).sum().backward()
        _check_gradients(name, layer, xg.grad)
    rng = random.Random(seed)
    with torch.no_grad():
        if "segments" in checks:
            for lengths in ([1, seq_len - 1], random_splits(seq_len, 3, rng), random_splits(seq_len, 4, rng)):
                outputs, start = [], 0
                for n in lengths:
                    end = start + n
                    mem_now = mem_mod(h[:, :end])  # what the model's memory holds at the end of the segment
                    sel = Selection(selection.indices[:, start:end], selection.weights[:, start:end])
                    outputs.append(_call_layer(layer, x[:, start:end], mem_now, sel, start))
                    start = end
                _assert_close(torch.cat(outputs, 1), y_full, f"{name}: segments {lengths} (with their position) "
                              "vs full pass", atol=atol, rtol=rtol)
        if "causality" in checks:
            g = torch.Generator().manual_seed(seed + 99)
            for t in sorted({1, seq_len // 2, seq_len - 1} - {0}):
                x2 = x.clone()
                x2[:, t:] += 3.0 * torch.randn(x2[:, t:].shape, generator=g).to(x2)
                y2 = _call_layer(layer, x2, memory, selection, 0)
                _assert_close(y2[:, :t], y_full[:, :t], f"{name}: causality: outputs before {t} after changing "
                              f"inputs >= {t}", atol=max(atol, 1e-6), rtol=0.0)
        if "save_load" in checks:
            torch.manual_seed(seed + 1)
            fresh = factory(d_model, **kwargs).to(device=device, dtype=dtype).eval()
            fresh.load_state_dict(layer.state_dict(), strict=True)
            _assert_close(_call_layer(fresh, x, memory, selection, 0), y_full,
                          f"{name}: outputs after loading the state_dict into a fresh instance", atol=0.0, rtol=0.0)
    return layer
