"""hsa-toolkit core: Hierarchical Sparse Attention for any recurrent backbone.

``import hsa_core`` gives the functional ops (:func:`hsa_select`, :func:`hsa_attention`), the plugin
marker :data:`hookimpl`, the Mixer contract, and (imported on first use) the layout loader and the
language model::

    import hsa_core
    spec = hsa_core.load_spec("examples/ramba-cpu.yaml")
    model = hsa_core.HSALanguageModel.from_spec(spec)
"""

from __future__ import annotations

import importlib
from typing import Any

from .hookspecs import hookimpl
from .interfaces import Mixer, MixerState
from .ops import hsa_attention, hsa_select

# Heavier parts, imported lazily so that `import hsa_core` stays cheap for plugins.
_LAZY = {
    "load_spec": "hsa_core.layout",
    "resolve": "hsa_core.layout",
    "dump_spec": "hsa_core.layout",
    "ResolvedSpec": "hsa_core.layout",
    "HSALanguageModel": "hsa_core.model",
    "ModelCache": "hsa_core.model",
    "load_pretrained": "hsa_core.model",
    "save_pretrained": "hsa_core.io",
    "describe": "hsa_core.summary",
    "ChunkMemory": "hsa_core.modules",
    "Retrieval": "hsa_core.modules",
    "HSALayer": "hsa_core.modules",
}

__all__ = ["Mixer", "MixerState", "hookimpl", "hsa_attention", "hsa_select", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hsa_core' has no attribute {name!r}")
