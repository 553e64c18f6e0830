"""Contract rules beyond shapes: the given state is not modified, complex states are compared with
tolerances, and retrieval layers have their own checker (with the position passed explicitly)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from ema_mixer import EMAMixer
from torch import nn

from hsa_core.interfaces import Mixer
from hsa_core.modules.hsa_layer import HSALayer
from hsa_core.testing import assert_states_close, check_mixer, check_retrieval


class ZeroesItsInput(EMAMixer):
    """Correct outputs, but zeroes the state it was given, in place (breaks rule 3)."""

    def forward(self, x, state=None, *, return_state=False):
        out = super().forward(x, state, return_state=return_state)
        if state is not None:
            state["h"].zero_()
        return out


class UpdatesInPlace(EMAMixer):
    """Writes the new state into the given dict (the dict is the caller's)."""

    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, state, return_state=return_state)
        if state is not None and new is not None:
            state["h"] = new["h"]
            return y, state
        return y, new


class ComplexEMA(EMAMixer):
    """A complex-valued diagonal recurrence (as in S4D/LRU) with a complex state."""

    def __init__(self, d_model: int, expand: int = 2) -> None:
        super().__init__(d_model, expand)
        self.theta = nn.Parameter(torch.linspace(0.1, 1.0, expand * d_model))

    def init_state(self, batch_size, *, device=None, dtype=None):
        return {"h": torch.zeros(batch_size, self.w_in.out_features, device=device, dtype=torch.complex64)}

    def forward(self, x, state=None, *, return_state=False):
        lam = torch.sigmoid(self.decay_logit) * torch.exp(1j * self.theta)
        u = self.w_in(x).to(torch.complex64)
        h = state["h"] if state is not None else torch.zeros_like(u[:, 0])
        hs = []
        for t in range(x.shape[1]):
            h = lam * h + u[:, t]
            hs.append(h)
        y = self.w_out(torch.stack(hs, 1).real.to(x.dtype))
        return y, ({"h": h} if state is not None or return_state else None)


def test_a_correct_mixer_passes() -> None:
    check_mixer(EMAMixer, d_model=8, seq_len=10)


@pytest.mark.parametrize("broken", [ZeroesItsInput, UpdatesInPlace])
def test_modifying_the_given_state_in_place_fails(broken: type[Mixer]) -> None:
    with pytest.raises(AssertionError, match=r"modified in place|added or removed in place"):
        check_mixer(broken, d_model=8, seq_len=10)


def test_complex_states_pass_with_tolerances() -> None:
    check_mixer(ComplexEMA, d_model=8, seq_len=10, atol=1e-4, rtol=1e-4)


def test_complex_state_difference_reports_the_max_difference_briefly() -> None:
    a = {"h": torch.randn(4, 300, dtype=torch.complex64)}
    close = {"h": a["h"] + 1e-7}
    assert_states_close(close, a, "x")
    far = {"h": a["h"].clone()}
    far["h"][2, 17] += 0.5j
    with pytest.raises(AssertionError) as info:
        assert_states_close(far, a, "x")
    message = str(info.value)
    assert "max |diff| = 5.000e-01" in message and "(2, 17)" in message and len(message) < 300


def test_integer_state_difference_is_brief() -> None:
    a = {"n": torch.arange(10_000).reshape(2, -1)}
    b = {"n": a["n"].clone()}
    b["n"][1, 3] += 2
    with pytest.raises(AssertionError) as info:
        assert_states_close(b, a, "x")
    assert "max |diff| = 2.000e+00" in str(info.value) and len(str(info.value)) < 300


# -- retrieval layers --------------------------------------------------------------------------------
def test_the_builtin_hsa_layer_passes_check_retrieval() -> None:
    check_retrieval(HSALayer, d_model=32, options={"num_heads": 4})


class NoPosition(nn.Module):
    def __init__(self, d_model: int, **_: Any) -> None:
        super().__init__()
        self.w = nn.Linear(d_model, d_model)

    def forward(self, x, memory, selection):
        return self.w(x)


class UsesPosition(HSALayer):
    """Adds an absolute-position signal: correct only if the position given is the real one."""

    def forward(self, x, memory, selection, *, position=0):
        pos = torch.arange(position, position + x.shape[1], device=x.device, dtype=x.dtype)
        return super().forward(x, memory, selection) + torch.sin(pos)[None, :, None] * 0.1


class IgnoresPosition(UsesPosition):
    """Assumes every call starts at position 0 (the bug an explicit position prevents)."""

    def forward(self, x, memory, selection, *, position=0):
        return super().forward(x, memory, selection, position=0)


class EditsMemory(HSALayer):
    def forward(self, x, memory, selection, *, position=0):
        memory.k.mul_(1.0 + 1e-3)
        return super().forward(x, memory, selection)


class LooksAhead(HSALayer):
    def forward(self, x, memory, selection, *, position=0):
        y = super().forward(x, memory, selection)
        return y + x.mean(dim=1, keepdim=True)


def test_a_layer_that_uses_its_position_correctly_passes() -> None:
    check_retrieval(UsesPosition, d_model=32, options={"num_heads": 4})


@pytest.mark.parametrize(("layer", "message"), [
    (NoPosition, "must accept the keyword 'position'"),
    (IgnoresPosition, r"segments .* \(with their position\) vs full pass"),
    (EditsMemory, "memory state given to forward.*modified in place"),
    (LooksAhead, "causality|segments"),
])
def test_broken_retrieval_layers_fail_clearly(layer: type[nn.Module], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_retrieval(layer, d_model=32, options={"num_heads": 4} if issubclass(layer, HSALayer) else {})


def test_the_model_passes_the_position_to_retrieval_layers() -> None:
    """A retrieval layer sees position = tokens before this call, in a full pass and when decoding."""
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    seen: list[int] = []

    class Spy(HSALayer):
        def forward(self, x, memory, selection, *, position=0):
            seen.append(position)
            return super().forward(x, memory, selection)

    model = HSALanguageModel.from_spec(load_spec("examples/ramba-cpu.yaml", overrides=["model.vocab_size=64"]))
    for block in model.layers:
        if hasattr(block, "layer") and isinstance(block.layer, HSALayer):
            spy = Spy.__new__(Spy)
            spy.__dict__.update(block.layer.__dict__)
            block.layer = spy
            block._pass_position = True
    ids = torch.randint(0, 64, (1, 40))
    out = model(ids[:, :33], return_cache=True)
    model(ids[:, 33:34], out.cache)
    n_hsa = len(seen) // 2
    assert n_hsa >= 1 and seen == [0] * n_hsa + [33] * n_hsa
