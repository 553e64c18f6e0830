"""HSA modules: chunk memory, retrieval, HSA layer and their building blocks."""

from .chunk_memory import ChunkMemory, MemoryState
from .common import RMSNorm, SwiGLU, swiglu_hidden
from .encoder import ChunkEncoder
from .hsa_layer import HSA_LAYER_DEFAULTS, HSALayer
from .offload import ChunkStore
from .retrieval import Retrieval, Selection, captured_selections, read_selected

__all__ = ["HSA_LAYER_DEFAULTS", "ChunkEncoder", "ChunkMemory", "ChunkStore", "HSALayer", "MemoryState",
           "RMSNorm", "Retrieval", "Selection", "SwiGLU", "captured_selections", "read_selected", "swiglu_hidden"]
