"""Training: the ``hsa train`` loop, atomic checkpoints, distributed set-up, RAMba training options.

* :class:`TrainConfig` and :func:`train` (:mod:`.trainer`), the learning-rate schedule :func:`lr_at`;
* :mod:`.checkpoint` — atomic checkpoint directories and exact resume;
* :mod:`.distributed` — ``torchrun`` environment, DDP / FSDP2 wrapping;
* :mod:`.segments` — backbone state reset inside long sequences, carried states.
"""

from __future__ import annotations

from .config import TrainConfig, lr_at
from .trainer import RunExistsError, TrainResult, read_metrics, train, train_losses

__all__ = ["RunExistsError", "TrainConfig", "TrainResult", "lr_at", "read_metrics", "train", "train_losses"]
