"""hsa_backbones.shadowing: the installed package ``kernels`` wins over the checkout's ``kernels/`` folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hsa_backbones import shadowing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_kernels_module() -> object:
    """Each test starts without a ``kernels`` module, and the one it imports is gone after it (the real
    package, when installed, is put back for the tests that follow)."""
    before = sys.modules.pop("kernels", None)
    yield
    sys.modules.pop("kernels", None)
    if before is not None:
        sys.modules["kernels"] = before


def test_the_installed_package_is_imported_though_the_checkout_comes_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("CUDAProperties = 'the PyPI package'\n")
    path = [str(ROOT), "", str(site)]  # as `python -m pytest` from the checkout's root has it
    monkeypatch.setattr(sys, "path", path)
    monkeypatch.chdir(ROOT)
    shadowing.import_pypi_kernels()
    assert sys.modules["kernels"].CUDAProperties == "the PyPI package"
    assert sys.path is path and sys.path == [str(ROOT), "", str(site)]  # put back as it was


def test_nothing_is_imported_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT), str(tmp_path)])
    shadowing.import_pypi_kernels()
    assert "kernels" not in sys.modules  # the folder was not imported in its place


def test_an_imported_kernels_module_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = type(sys)("kernels")
    monkeypatch.setitem(sys.modules, "kernels", marker)
    shadowing.import_pypi_kernels()
    assert sys.modules["kernels"] is marker
