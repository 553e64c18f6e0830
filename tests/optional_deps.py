"""Skips for missing optional pieces that cannot hide a failure in CI.

A user running ``pytest`` without an extra (fla, mamba-ssm, the example plugin) gets a skip. ``make
test`` (and so CI, where everything is installed) sets ``HSA_TESTS_REQUIRE_ALL=1``: there a missing
piece, such as a built-in backbone whose entry point stopped registering, fails the test instead.
"""

from __future__ import annotations

import os

import pytest


def skip_unless_required(reason: str) -> None:
    """Skip with ``reason``, or fail when the environment says everything must be present."""
    if os.environ.get("HSA_TESTS_REQUIRE_ALL") == "1":
        pytest.fail(f"required in this run (HSA_TESTS_REQUIRE_ALL=1) but unavailable: {reason}")
    pytest.skip(reason)
