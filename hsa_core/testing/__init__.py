"""Testing helpers for backbone authors: the Mixer contract checks (:mod:`hsa_core.testing.contract`)."""

from __future__ import annotations

from .contract import (
    ALL_CHECKS,
    assert_states_close,
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

__all__ = [
    "ALL_CHECKS",
    "assert_states_close",
    "check_causality",
    "check_forward_shape",
    "check_gradients",
    "check_mixer",
    "check_save_load",
    "check_segments",
    "check_state_layout",
    "check_step",
    "random_splits",
]
