"""Built-in backbones, registered through the ``hsa`` entry-point group (filled by the backbones work)."""
