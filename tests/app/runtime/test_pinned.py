"""``hsa_app.runtime.pinned.fast_pinned_memory``: the pinned allocator options of the commands that may offload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hsa_app.runtime import pinned
from hsa_cli.app import app
from typer.testing import CliRunner


@pytest.fixture
def no_allocator_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither allocator variable set; whatever a test sets is removed again afterwards (setenv first,
    so that the monkeypatch records the variable as absent and deletes it at teardown)."""
    for name in pinned.ALLOCATOR_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    return monkeypatch


def test_sets_the_pinned_options_when_the_user_set_none(no_allocator_variables: pytest.MonkeyPatch) -> None:
    assert pinned.fast_pinned_memory() is True
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == pinned.PINNED_HOST_OPTIONS
    assert "PYTORCH_ALLOC_CONF" not in os.environ


@pytest.mark.parametrize("name", pinned.ALLOCATOR_VARIABLES)
def test_leaves_a_configured_allocator_alone(no_allocator_variables: pytest.MonkeyPatch, name: str) -> None:
    no_allocator_variables.setenv(name, "expandable_segments:True")
    assert pinned.fast_pinned_memory() is False
    assert os.environ[name] == "expandable_segments:True"
    assert all(other not in os.environ for other in pinned.ALLOCATOR_VARIABLES if other != name)


def test_changes_nothing_once_cuda_has_started(no_allocator_variables: pytest.MonkeyPatch) -> None:
    """torch reads the variable when CUDA starts: setting it later would claim an effect it has not."""
    no_allocator_variables.setattr(torch.cuda, "is_initialized", lambda: True)
    assert pinned.fast_pinned_memory() is False
    assert all(name not in os.environ for name in pinned.ALLOCATOR_VARIABLES)


@pytest.mark.parametrize("command", [["eval", "passkey"], ["generate", "--prompt", "x"]])
def test_eval_and_generate_set_it_before_anything_else(no_allocator_variables: pytest.MonkeyPatch,
                                                       tmp_path: Path, command: list[str]) -> None:
    """Both commands that may offload a chunk memory set it first: even a run that then fails on a
    missing RUN has it (an evaluation must have it before its model touches CUDA)."""
    result = CliRunner().invoke(app, [*command, str(tmp_path / "missing")])
    assert result.exit_code == 2, result.output
    assert os.environ.get("PYTORCH_CUDA_ALLOC_CONF") == pinned.PINNED_HOST_OPTIONS
