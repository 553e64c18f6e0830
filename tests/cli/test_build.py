"""``hsa build`` (table, --json, --out, --device, --context-len), exit code 3, and ``hsa demo``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_cli.app import app
from typer.testing import CliRunner

from hsa_core.model import HSALanguageModel

# Not imported from conftest: several test folders have a conftest module of that name.
TOY_PLUGIN = Path(__file__).with_name("toy_plugin.py")


def _build(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["build", *args, "--plugin", str(TOY_PLUGIN)], env={"COLUMNS": "200"})


def test_build_prints_layer_table_and_totals(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = _build(runner, str(write_layout()))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("toy_ema", "hsa_builtin_layers", "reads mid via mid_sel", "builds memory mid",
                 "parameters:", "recurrent state", "chunk memory", "on meta"):
        assert text in out, text


def test_build_json_has_canonical_spec_and_summary(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = _build(runner, str(write_layout()), "--json", "--context-len", "128")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"] == "meta"
    assert [layer["kind"] for layer in data["spec"]["layers"]] == ["toy_ema"] * 2 + ["hsa", "toy_ema"] * 2
    summary = data["summary"]
    assert summary["context_len"] == 128 and summary["total"] > 0 and summary["num_layers"] == 6
    # The memory grows with the context; the EMA state does not.
    longer = json.loads(_build(runner, str(write_layout()), "--json", "--context-len", "1024").stdout)["summary"]
    assert longer["memory_bytes"] > summary["memory_bytes"]
    assert longer["state_bytes"] == summary["state_bytes"]


def test_build_out_writes_a_loadable_model(runner: CliRunner, write_layout: Callable[..., Path],
                                           tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = _build(runner, str(write_layout()), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded = HSALanguageModel.from_pretrained(out)  # the toy plugin is still registered (same host)
    ids = torch.randint(0, 64, (1, 11))
    assert loaded(ids).logits.shape == (1, 11, 64)
    # Refuses to overwrite without --force (usage error, before building anything).
    again = _build(runner, str(write_layout()), "--out", str(out))
    assert again.exit_code == 2, again.output
    forced = _build(runner, str(write_layout()), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output


def test_out_on_meta_is_a_usage_error(runner: CliRunner, write_layout: Callable[..., Path], tmp_path: Path) -> None:
    result = _build(runner, str(write_layout()), "--out", str(tmp_path / "m"), "--device", "meta")
    assert result.exit_code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_device_cuda_without_cuda_is_exit_3(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    # like `hsa bench` and `hsa train/eval --device cuda`: no CUDA GPU is exit code 3
    result = _build(runner, str(write_layout()), "--device", "cuda")
    assert result.exit_code == 3 and "CUDA" in result.output


def test_bad_device_is_a_usage_error(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    assert _build(runner, str(write_layout()), "--device", "tpu").exit_code == 2


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_missing_optional_dependency_exits_3_naming_what_to_install(
    device: str, runner: CliRunner, write_layout: Callable[..., Path]
) -> None:
    def use_needs_dep(doc: dict[str, Any]) -> None:
        doc["symbols"]["E"] = "toy_needs_dep"
        doc["defaults"] = {}

    result = _build(runner, str(write_layout(use_needs_dep)), "--device", device)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    # The toy plugin is a --plugin file (no package of its own): its extra belongs to no package the
    # user could install, and certainly not to hsa-toolkit; the hint names the missing module.
    assert "pip install hsa_test_module_that_does_not_exist" in lines[0] and "Traceback" not in result.output
    assert "hsa-toolkit[" not in lines[0]


def test_constructor_error_is_one_line_exit_1(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    """Options the layout accepts by type but the backbone rejects (ValueError in its constructor)."""
    layout = write_layout(lambda doc: doc["defaults"]["toy_ema"].update(decay=1.5))
    result = _build(runner, str(layout))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {layout}: building the model failed: ValueError")
    assert "decay must be in [0, 1)" in lines[0] and "Traceback" not in result.output


def test_demo_runs_and_checks_decoding(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = runner.invoke(app, ["demo", str(write_layout()), "--plugin", str(TOY_PLUGIN), "--new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "incremental decoding matches the full forward pass" in result.stdout


def test_demo_check_failure_exits_4(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    # A negative tolerance cannot be met: exercises the failure path of the self-check.
    result = runner.invoke(app, ["demo", str(write_layout()), "--plugin", str(TOY_PLUGIN), "--new-tokens", "2",
                                 "--tolerance", "-1"])
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("error: demo: ")


def test_demo_default_is_the_cpu_ramba(runner: CliRunner) -> None:
    """The README's main job: `hsa demo` with no argument builds ramba-cpu and passes its check."""
    result = runner.invoke(app, ["demo", "--new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "ramba-cpu" in result.stdout and "mamba2" in result.stdout
    assert "incremental decoding matches the full forward pass" in result.stdout


def test_real_backbone_without_fla_exits_3(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a machine without fla: importing fla.layers fails, `hsa build gla-hsa` names the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "fla.layers", None)  # `import fla.layers` now raises ImportError
    result = runner.invoke(app, ["build", "gla-hsa", "--set", "layers=G*24 | (H G)*3", "--set", "model.d_model=64",
                                 "--set", "retrieval.mid_sel.retrieval_dim=64"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'hsa-toolkit[fla]'" in lines[0], result.stderr
