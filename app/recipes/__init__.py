"""Training recipes: named sets of ``hsa train`` settings shipped as YAML (``hsa train --recipe NAME``).

A recipe file holds ``name``, ``description`` and ``train``: a mapping of
:class:`~hsa_app.training.TrainConfig` fields, plus ``warmup_fraction`` (the warm-up as a fraction
of the run's steps, turned into ``warmup`` steps by :func:`apply_recipe`). ``ramba-paper`` is the
RAMba paper's recipe. A recipe may also be given as a path to such a file.
"""

from __future__ import annotations

import math
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RecipeError", "apply_recipe", "load_recipe", "names", "path"]

_EXTRA_KEYS = ("warmup_fraction",)


class RecipeError(ValueError):
    """An unknown recipe, or an invalid recipe file (the message names the file and key)."""


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def path(name: str) -> Path:
    """The YAML file of recipe ``name``, or ``name`` itself when it is an existing file."""
    if Path(name).is_file():
        return Path(name)
    candidate = _folder() / f"{name}.yaml"
    if not candidate.is_file():
        raise RecipeError(f"no recipe named {name!r} (recipes: {', '.join(names())}; or a path to a recipe YAML)")
    return candidate


def load_recipe(name: str) -> dict[str, Any]:
    """The ``train`` mapping of a recipe (by name or path), keys checked against ``TrainConfig``."""
    from ..training import TrainConfig

    file = path(name)
    doc = yaml.safe_load(file.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("train"), dict):
        raise RecipeError(f"{file}: train: missing (a mapping of hsa train settings)")
    known = {f.name for f in fields(TrainConfig)} | set(_EXTRA_KEYS)
    for key in doc["train"]:
        if key not in known:
            raise RecipeError(f"{file}: train.{key}: unknown setting (known: {', '.join(sorted(known))})")
    frac = doc["train"].get("warmup_fraction")
    if frac is not None and not (isinstance(frac, int | float) and 0 <= frac < 1):
        raise RecipeError(f"{file}: train.warmup_fraction: expected a number in [0, 1), got {frac!r}")
    return dict(doc["train"])


def apply_recipe(recipe: dict[str, Any], values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """``values`` (TrainConfig keyword arguments) with the recipe's settings for every key not in
    ``explicit`` (the ones given on the command line). ``warmup_fraction`` sets ``warmup`` to
    ``ceil(fraction * steps)`` unless ``warmup`` was given."""
    out = dict(values)
    for key, value in recipe.items():
        if key in _EXTRA_KEYS or key in explicit:
            continue
        out[key] = value
    frac = recipe.get("warmup_fraction")
    if frac is not None and "warmup" not in explicit:
        out["warmup"] = math.ceil(frac * out["steps"])
    return out
