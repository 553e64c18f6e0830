"""Fixtures of the CLI tests: an isolated plugin host, a runner, and small layout files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hsa_core.plugins import reset_host

TOY_PLUGIN = Path(__file__).with_name("toy_plugin.py")

#: A small valid layout over the toy backbone (no optional dependency, builds on CPU instantly).
TOY_LAYOUT: dict[str, Any] = {
    "version": 1,
    "name": "toy-hsa",
    "model": {"vocab_size": 64, "d_model": 32, "tie_embeddings": True},
    "defaults": {"toy_ema": {"decay": 0.8}},
    "memories": {"mid": {"after_layer": 2, "chunk_size": 4, "kv_heads": 2, "head_dim": 8,
                         "encoder": {"layers": 1}}},
    "retrieval": {"mid_sel": {"memory": "mid", "topk": 2, "retrieval_dim": 16, "retrieval_heads": 1,
                              "weighting": "stick_breaking", "shared": True}},
    "symbols": {"E": "toy_ema", "H": {"kind": "hsa", "selection": "mid_sel", "num_heads": 4}},
    "layers": "E*2 | (H E)*2",
}


@pytest.fixture(autouse=True)
def _fresh_plugin_host() -> Iterator[None]:
    """Each test gets a fresh process-wide plugin host: ``--plugin`` registrations do not leak."""
    reset_host()
    yield
    reset_host()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_layout(tmp_path: Path) -> Callable[..., Path]:
    """``write_layout(edit=None, name="layout.yaml")``: the toy layout, optionally edited, as a file."""

    def write(edit: Callable[[dict[str, Any]], None] | None = None, name: str = "layout.yaml") -> Path:
        doc = yaml.safe_load(yaml.safe_dump(TOY_LAYOUT))  # deep copy
        if edit is not None:
            edit(doc)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write
