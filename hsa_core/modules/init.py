"""Initialisation schemes, chosen by name in a layout (``model.init``).

``toolkit`` (default)
    What the modules do when they are built: PyTorch's default ``nn.Linear`` initialisation
    (Kaiming-uniform) for every projection, mamba-ssm's initialisation for the Mamba blocks
    (``A_log = log(U(1, 16))`` per head), ``N(0, init_std)`` for the embedding.

``published``
    The RAMba authors' scheme (RamstorageAI/long-context-modeling, read from their model code):

    * every 1-D ``A_log`` (Mamba2, one entry per head) is ``log(1, 2, ..., nheads)``;
    * the retrieval projections are ``N(0, init_std)``: HSA ``q_proj``/``o_proj``, the retrieval
      query, the memory's ``k_proj``/``v_proj``/``landmark_proj`` and the encoder's CLS embedding;
    * every ``nn.Linear`` bias is zero (their pre-trained-model hook zeroes biases, e.g. the
      encoder's q/k/v biases); other linear weights (Mamba in/out projections, the encoder's
      attention and MLP) keep PyTorch's default, as theirs do;
    * the embedding is ``N(0, init_std)`` in both schemes; ``dt_bias`` is mamba-ssm's in both.

Only the distributions are the authors'; no random stream is reproduced.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["INIT_SCHEMES", "apply_init"]

INIT_SCHEMES = ("toolkit", "published")


@torch.no_grad()
def apply_init(model: nn.Module, scheme: str, *, std: float = 0.02) -> None:
    """Re-initialise ``model`` (an :class:`~hsa_core.model.HSALanguageModel`) in place by ``scheme``.

    ``toolkit`` leaves the model as built. Works on the meta device (nothing is allocated).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    if scheme == "toolkit":
        return
    from .chunk_memory import ChunkMemory
    from .hsa_layer import HSALayer
    from .retrieval import Retrieval

    for module in model.modules():
        a_log = getattr(module, "A_log", None)
        if isinstance(a_log, nn.Parameter) and a_log.dim() == 1:
            n = a_log.shape[0]
            a_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float64, device=a_log.device)
                                  ).to(a_log.dtype))
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        normal: list[nn.Parameter] = []
        if isinstance(module, HSALayer):
            normal += [module.q_proj.weight, module.o_proj.weight]
        elif isinstance(module, Retrieval):
            normal.append(module.query.weight)
        elif isinstance(module, ChunkMemory):
            normal += [module.k_proj.weight, module.v_proj.weight, module.landmark_proj.weight]
            if module.encoder is not None:
                normal.append(module.encoder.cls)
        for p in normal:
            nn.init.normal_(p, mean=0.0, std=std)
