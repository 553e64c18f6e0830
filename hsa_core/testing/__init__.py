"""Testing helpers for plugin authors: the Mixer contract checks and the retrieval-layer contract
checks (:mod:`hsa_core.testing.contract`)."""

from __future__ import annotations

from .contract import (
    ALL_CHECKS,
    RETRIEVAL_CHECKS,
    assert_states_close,
    check_causality,
    check_forward_shape,
    check_gradients,
    check_mixer,
    check_retrieval,
    check_save_load,
    check_segments,
    check_state_layout,
    check_step,
    random_splits,
)

__all__ = [
    "ALL_CHECKS",
    "RETRIEVAL_CHECKS",
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
