"""The PyPI package ``kernels`` before this repository's ``kernels/`` folder.

transformers (>= 5.25) requires and imports the package ``kernels``, and fla imports transformers. In
a checkout, this repository's ``kernels/`` folder (installed as ``hsa_kernels``) answers to the same
name wherever the checkout's root is on ``sys.path``: ``python -c`` or ``python -m`` run from the root,
or pytest. Importing fla there failed with "cannot import name 'CUDAProperties' from 'kernels'". An
installed toolkit never sees the folder; this makes a checkout behave the same.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

#: the checkout's root, when this module runs from a checkout (``backbones/`` under it)
_ROOT = Path(__file__).resolve().parents[1]


def import_pypi_kernels() -> None:
    """Import the installed ``kernels`` package, if any, with the checkout's root off ``sys.path`` for that
    import, so that later imports of the name (transformers') get it. Call before importing fla."""
    if "kernels" in sys.modules:
        return  # imported already: this call changes nothing
    saved = sys.path[:]
    sys.path[:] = [entry for entry in saved if Path(entry or os.getcwd()).resolve() != _ROOT]
    try:
        if importlib.util.find_spec("kernels") is not None:
            importlib.import_module("kernels")
    finally:
        sys.path[:] = saved
