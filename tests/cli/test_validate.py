"""``hsa validate`` and the exit-code contract for invalid specs (exit 1, one line, no traceback)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hsa_cli.app import app
from typer.testing import CliRunner

# Not imported from conftest: several test folders have a conftest module of that name.
TOY_PLUGIN = Path(__file__).with_name("toy_plugin.py")


def _validate(runner: CliRunner, path: Path, *extra: str) -> Any:
    return runner.invoke(app, ["validate", str(path), "--plugin", str(TOY_PLUGIN), *extra])


def test_valid_layout_prints_ok_line(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = _validate(runner, write_layout())
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: toy-hsa (6 layers)"


def test_set_overrides_apply(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = _validate(runner, write_layout(), "--set", "name=renamed", "--set", "layers=E*3 H")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: renamed (4 layers)"


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


# (edit, the path the one-line error must name, a word of the message)
MALFORMED = {
    "unknown kind": (_set(["symbols", "E"], "mamba3"), "symbols.E", "unknown kind 'mamba3'"),
    "unknown kind in a layer": (_set(["layers"], ["E", "E", {"kind": "gla2"}, "H"]), "layers[2].kind", "gla2"),
    "bad memory reference": (_set(["retrieval", "mid_sel", "memory"], "mid2"), "retrieval.mid_sel.memory", "mid2"),
    "bad selection reference": (_set(["symbols", "H", "selection"], "nope"), "layers[2].selection", "nope"),
    "wrong head ratio": (_set(["symbols", "H", "num_heads"], 3), "layers[2].num_heads", "multiple"),
    "bad pattern (paren)": (_set(["layers"], "E*2 | (H E*2"), "layers", "unbalanced"),
    "bad pattern (count)": (_set(["layers"], "E*x"), "layers", "repeat count"),
    "bad pattern (symbol)": (_set(["layers"], "E*2 Q"), "layers", "'Q'"),
    "wrong type": (_set(["model", "d_model"], "big"), "model.d_model", "integer"),
    "wrong option type": (_set(["defaults", "toy_ema", "decay"], "fast"), "decay", "number"),
    "unknown option": (_set(["defaults", "toy_ema", "decy"], 0.5), "decy", "did you mean 'decay'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["validate", "build"])
def test_malformed_spec_is_one_line_with_path_and_exit_1(
    case: str, command: str, runner: CliRunner, write_layout: Callable[..., Path]
) -> None:
    edit, path_in_doc, words = MALFORMED[case]
    layout = write_layout(edit)
    result = runner.invoke(app, [command, str(layout), "--plugin", str(TOY_PLUGIN)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {layout}: "), lines[0]
    assert path_in_doc in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_bad_set_value_is_exit_1(runner: CliRunner, write_layout: Callable[..., Path]) -> None:
    result = _validate(runner, write_layout(), "--set", "model.d_model=abc")
    assert result.exit_code == 1
    assert "model.d_model" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_invalid_yaml_is_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {vocab_size: 1\nlayers: [\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {bad}") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["validate"],                                   # missing SPEC
    ["validate", "no-such-preset-or-file"],         # neither a file nor a preset
    ["validate", "ramba-cpu", "--bogus"],           # unknown option
    ["validate", "ramba-cpu", "--plugin", "/no/such/plugin.py"],
])
def test_usage_errors_exit_2(args: list[str], runner: CliRunner) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_unknown_spec_lists_presets(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", "ramba-37"])
    assert result.exit_code == 2
    assert "ramba-370m" in result.output


def test_presets_validate_by_name(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", "minlstm-hsa"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: minlstm-hsa (")
