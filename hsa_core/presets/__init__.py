"""Built-in layout presets: YAML files shipped as package data.

``hsa build ramba-370m`` resolves a preset by name; ``examples/*.yaml`` are relative symlinks to these
files, so each layout has one source. Presets are plain layouts: load them with
:func:`hsa_core.layout.load_spec` through :func:`path`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["names", "path"]


def _folder() -> Path:
    # A real directory both for editable installs and for wheels (setuptools installs package
    # data next to the module, unzipped), so Path() is safe here.
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def path(name: str) -> Path:
    """The YAML file of preset ``name``.

    Raises:
        KeyError: no preset has that name (the message lists the known ones).
    """
    candidate = _folder() / f"{name}.yaml"
    if not candidate.is_file():
        raise KeyError(f"no preset named {name!r} (presets: {', '.join(names())})")
    return candidate
