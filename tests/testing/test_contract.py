"""The contract checks accept a correct mixer and reject each kind of broken one with a clear message."""

from __future__ import annotations

import random

import pytest
import torch
from ema_mixer import EMAMixer
from torch import Tensor, nn

from hsa_core.testing import (
    check_causality,
    check_forward_shape,
    check_gradients,
    check_mixer,
    check_save_load,
    check_segments,
    check_state_layout,
    check_step,
    random_splits,
)


class ForgetfulMixer(EMAMixer):
    """Ignores the incoming state."""

    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, None, return_state=True)
        return y, (new if state is not None or return_state else None)


class NonCausalMixer(EMAMixer):
    """Adds the mean over the whole sequence (looks ahead)."""

    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, state, return_state=return_state)
        return y + x.mean(dim=1, keepdim=True), new


class TimeFirstStateMixer(EMAMixer):
    """Stores its state with the batch second."""

    def init_state(self, batch_size, *, device=None, dtype=None):
        return {"h": torch.zeros(1, batch_size, self.w_in.out_features, device=device, dtype=dtype)}

    def forward(self, x, state=None, *, return_state=False):
        inner = None if state is None else {"h": state["h"][0]}
        y, new = super().forward(x, inner, return_state=return_state)
        return y, (None if new is None else {"h": new["h"].unsqueeze(0)})


class ViewStateMixer(EMAMixer):
    """Returns its state as a slice of all the hidden states of the pass (keeps them alive)."""

    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, state, return_state=return_state)
        if new is None:
            return y, None
        every = torch.stack([new["h"]] * x.shape[1], dim=1)  # (B, T, inner), as a scan's outputs
        return y, {"h": every[:, -1]}


class DeadParameterMixer(EMAMixer):
    def __init__(self, d_model: int, expand: int = 2) -> None:
        super().__init__(d_model, expand)
        self.unused = nn.Parameter(torch.zeros(3))


class BadStepMixer(EMAMixer):
    def step(self, x, state):
        y, new = super().step(x, state)
        return y * 1.01, new


class UnsavedBufferMixer(EMAMixer):
    """Keeps a random non-persistent buffer, so a reloaded instance computes something else."""

    def __init__(self, d_model: int, expand: int = 2) -> None:
        super().__init__(d_model, expand)
        self.register_buffer("scale", torch.rand(d_model) + 0.5, persistent=False)

    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, state, return_state=return_state)
        return y * self.scale, new


class WrongDtypeMixer(EMAMixer):
    def forward(self, x, state=None, *, return_state=False):
        y, new = super().forward(x, state, return_state=return_state)
        return y.double(), new


def _built(cls: type[EMAMixer], d_model: int = 8) -> tuple[EMAMixer, Tensor]:
    torch.manual_seed(0)
    return cls(d_model).eval(), torch.randn(2, 9, d_model)


def test_correct_mixer_passes_every_check() -> None:
    mixer = check_mixer(EMAMixer, d_model=8, options={"expand": 3}, seq_len=10)
    assert isinstance(mixer, EMAMixer) and not mixer.training


def test_forgetful_mixer_fails_segments() -> None:
    mixer, x = _built(ForgetfulMixer)
    with pytest.raises(AssertionError, match=r"segments \[.*\] vs full pass: outputs"):
        check_segments(mixer, x)


def test_non_causal_mixer_fails_causality() -> None:
    mixer, x = _built(NonCausalMixer)
    with pytest.raises(AssertionError, match="causality: outputs before"):
        check_causality(mixer, x)


def test_time_first_state_fails_layout() -> None:
    mixer, x = _built(TimeFirstStateMixer)
    with pytest.raises(AssertionError, match=r"batch .* as its first dimension"):
        check_state_layout(mixer, x)


def test_state_viewing_its_activations_fails_layout() -> None:
    mixer, x = _built(ViewStateMixer)
    with pytest.raises(AssertionError, match=r"state\['h'\] are views into larger tensors"):
        check_state_layout(mixer, x)


def test_dead_parameter_fails_gradients() -> None:
    mixer, x = _built(DeadParameterMixer)
    with pytest.raises(AssertionError, match=r"no gradient reaches parameters \['unused'\]"):
        check_gradients(mixer, x)


def test_bad_step_fails_step() -> None:
    mixer, x = _built(BadStepMixer)
    with pytest.raises(AssertionError, match="step-by-step vs full pass: outputs: max"):
        check_step(mixer, x)


def test_unsaved_buffer_fails_save_load() -> None:
    mixer, x = _built(UnsavedBufferMixer)
    with pytest.raises(AssertionError, match="after loading the state_dict"):
        check_save_load(UnsavedBufferMixer, mixer, x, d_model=8)


def test_wrong_dtype_fails_forward_shape() -> None:
    mixer, x = _built(WrongDtypeMixer)
    with pytest.raises(AssertionError, match="output dtype"):
        check_forward_shape(mixer, x)


def test_check_mixer_rejects_non_mixer_and_unknown_checks() -> None:
    with pytest.raises(AssertionError, match=r"not a hsa_core\.interfaces\.Mixer"):
        check_mixer(lambda d: nn.Linear(d, d), d_model=4)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="unknown checks"):
        check_mixer(EMAMixer, d_model=4, checks=["nope"])


@pytest.mark.parametrize("seq_len", [2, 5, 17])
def test_random_splits_cover_the_sequence(seq_len: int) -> None:
    rng = random.Random(3)
    for n in range(1, 6):
        lengths = random_splits(seq_len, n, rng)
        assert sum(lengths) == seq_len and all(n >= 1 for n in lengths)
        assert len(lengths) == min(n, seq_len)
