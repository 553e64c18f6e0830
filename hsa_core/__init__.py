"""hsa-toolkit core: Hierarchical Sparse Attention for any recurrent backbone.

``import hsa_core`` gives the functional ops (:func:`hsa_select`, :func:`hsa_attention`), the plugin
marker :data:`hookimpl`, and (lazily) the modules, layout builder and model.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .interfaces import Mixer, MixerState
from .ops import hsa_attention, hsa_select

__all__ = ["Mixer", "MixerState", "hookimpl", "hsa_attention", "hsa_select"]
__version__ = "0.1.0"
