"""The plugin module named by the ``hsa`` entry point: registers the ``minlstm`` backbone.

Keep this module cheap to import: ``hsa list`` imports every plugin. Heavy imports belong inside the
factory (here the mixer only needs torch, which hsa-toolkit imports anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hsa_core

from .mixer import MINLSTM_DEFAULTS, MinLSTMMixer


@hsa_core.hookimpl
def hsa_register_backbones(register: Callable[..., Any]) -> None:
    """Register ``minlstm``; ``defaults`` lists every option a layout may set for it."""
    register(
        "minlstm",
        MinLSTMMixer,
        description="minLSTM: gated linear RNN, parallel log-space scan (plugin example)",
        defaults=MINLSTM_DEFAULTS,
    )
