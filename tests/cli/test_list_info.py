"""``hsa list`` and ``hsa info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hsa_cli.app import app
from typer.testing import CliRunner

# Not imported from conftest: several test folders have a conftest module of that name.
TOY_PLUGIN = Path(__file__).with_name("toy_plugin.py")


def test_list_shows_kinds_with_their_plugin(runner: CliRunner) -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "hsa_builtin_layers" in result.stdout
    assert "minlstm" in result.stdout and "hsa_minlstm" in result.stdout  # the third-party plugin


def test_list_json_reports_provenance_and_availability(runner: CliRunner) -> None:
    result = runner.invoke(app, ["list", "--json", "--plugin", str(TOY_PLUGIN)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    backbones = {row["name"]: row for row in data["backbones"]}
    layers = {row["name"]: row for row in data["retrieval_layers"]}
    assert layers["hsa"]["plugin"] == "hsa_builtin_layers"
    assert backbones["minlstm"]["plugin"] == "hsa_minlstm" and backbones["minlstm"]["available"]
    assert backbones["toy_ema"]["plugin"].startswith("path:") and backbones["toy_ema"]["available"]
    missing = backbones["toy_needs_dep"]
    assert not missing["available"] and missing["extra"] == "imaginary"
    tasks = {row["name"]: row for row in data["tasks"]}
    assert tasks["passkey"]["plugin"] == "hsa_builtin_tasks" and "num_symbols" in tasks["passkey"]["options"]


def test_list_table_names_what_to_install_for_missing_deps(runner: CliRunner) -> None:
    result = runner.invoke(app, ["list", "--plugin", str(TOY_PLUGIN)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # a --plugin file has no package: the missing module itself, never the toolkit's extra
    assert "pip install hsa_test_module_that_does_not_exist" in result.stdout
    assert "hsa-toolkit[imaginary]" not in result.stdout


def test_info_reports_versions_and_backends(runner: CliRunner) -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["versions"]["torch"]
    assert {"hsa_select", "hsa_attention"} <= set(data["backends"])
    assert data["backends"]["hsa_select"]["cpu"] in ("torch", "triton")
    table = runner.invoke(app, ["info"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "hsa_attention" in table.stdout and "torch" in table.stdout


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert "build" in result.output and "validate" in result.output


@pytest.mark.slow
def test_console_script_and_module_entry_points() -> None:
    """The installed `hsa` script and `python -m hsa_cli` both run the app (exit codes included)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("hsa", path=str(Path(sys.executable).parent))
    assert script is not None, "the `hsa` console script is not installed next to this Python"
    ok = subprocess.run([script, "validate", "ramba-cpu"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: ramba-cpu (10 layers)", ok.stderr
    bad = subprocess.run([sys.executable, "-m", "hsa_cli", "validate", "ramba-cpu", "--set", "model.d_model=x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
