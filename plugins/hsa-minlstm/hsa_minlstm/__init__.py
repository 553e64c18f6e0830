"""hsa-minlstm: an example third-party backbone for hsa-toolkit.

Adds the backbone kind ``minlstm`` (:class:`MinLSTMMixer`), a minLSTM recurrent layer ("Were RNNs All
We Needed?", Feng et al., 2024) computed with a parallel scan in log space. Copy this package to
write your own backbone plugin: the files that matter are ``mixer.py`` (the model code, implementing
:class:`hsa_core.interfaces.Mixer`), ``plugin.py`` (the hook) and the ``[project.entry-points.hsa]``
table of ``pyproject.toml``.
"""

from __future__ import annotations

from .mixer import MINLSTM_DEFAULTS, MinLSTMMixer

__all__ = ["MINLSTM_DEFAULTS", "MinLSTMMixer"]
__version__ = "0.1.0"
