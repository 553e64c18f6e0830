"""bench/offload/with_select_launch.py: an `hsa` command under other selection launch settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hsa_kernels.hsa_select.selection as selection
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "offload" / "with_select_launch.py"
_spec = importlib.util.spec_from_file_location("with_select_launch", SCRIPT)
assert _spec is not None and _spec.loader is not None
with_select_launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(with_select_launch)


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's table and fallback come back after the test (the script replaces them)."""
    monkeypatch.setattr(selection, "MEASURED", selection.MEASURED)
    monkeypatch.setattr(selection, "FALLBACK", selection.FALLBACK)


def test_the_setting_reaches_every_selection(restored: None, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SELECT_LAUNCH", '{"warps": 4, "stages": 2}')
    monkeypatch.setattr("sys.argv", ["with_select_launch.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        with_select_launch.main()
    assert exit_info.value.code == 0
    want = selection.SelectLaunch(warps=4, stages=2)
    assert selection.select_settings_for(torch.device("cpu")) == want  # the fallback: CPU and other GPUs
    assert selection.MEASURED[90] == want
    assert "selection launch: SelectLaunch(" in capsys.readouterr().out


@pytest.mark.parametrize("value", [pytest.param('{"block_t": 12}', id="not-a-power-of-two"),
                                   pytest.param('{"warps": ', id="bad-json"),
                                   pytest.param('{"tiles": 3}', id="unknown-field")])
def test_a_bad_setting_is_refused(restored: None, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], value: str) -> None:
    monkeypatch.setenv("SELECT_LAUNCH", value)
    before = selection.MEASURED
    assert with_select_launch.main() == 2
    assert "SELECT_LAUNCH" in capsys.readouterr().err
    assert selection.MEASURED is before  # nothing replaced
