"""Training: the ``hsa train`` loop, atomic checkpoints, distributed set-up, RAMba training options.

* :class:`TrainConfig` and :func:`train` (:mod:`.trainer`), the learning-rate schedule :func:`lr_at`;
* :mod:`.segments` — backbone state reset inside long sequences, carried states;
* :mod:`.text_data` — the language-model data source ``hsa train --data`` draws its batches from;
* :mod:`.throughput` — whole-model training throughput (``hsa bench model``).

Checkpoints and the ``torchrun`` set-up, which evaluation and the data source use as well, are in
:mod:`hsa_app.runtime`.
"""

from __future__ import annotations

from .config import TrainConfig, lr_at
from .trainer import RunExistsError, TrainResult, read_metrics, train, train_losses

__all__ = ["RunExistsError", "TrainConfig", "TrainResult", "lr_at", "read_metrics", "train", "train_losses"]
