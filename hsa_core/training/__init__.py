"""Training: the `hsa train` loop, checkpoints, distributed set-up, RAMba training options."""
