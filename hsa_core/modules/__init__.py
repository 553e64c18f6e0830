"""HSA modules: chunk memory, retrieval, HSA layer and their building blocks."""

from .chunk_memory import ChunkMemory, MemoryState
from .common import RMSNorm, SwiGLU, swiglu_hidden
from .encoder import ChunkEncoder
from .hsa_layer import HSA_LAYER_DEFAULTS, HSALayer
from .retrieval import Retrieval, Selection

__all__ = ["HSA_LAYER_DEFAULTS", "ChunkEncoder", "ChunkMemory", "HSALayer", "MemoryState", "RMSNorm",
           "Retrieval", "Selection", "SwiGLU", "swiglu_hidden"]
