"""Built-in retrieval layers, registered through the same hook as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .hookspecs import hookimpl


@hookimpl
def hsa_register_retrieval_layers(register: Callable[..., Any]) -> None:
    from .modules.hsa_layer import HSA_LAYER_DEFAULTS, HSALayer

    register("hsa", HSALayer, description="Hierarchical Sparse Attention over a chunk memory",
             defaults=HSA_LAYER_DEFAULTS)
