"""Model directories that are damaged, edited or need a missing plugin: always an ``HSAError`` naming it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file, save_file

from hsa_core import builtin_plugin
from hsa_core.errors import HSAError, InvalidFileError, SpecError
from hsa_core.io import read_config, save_pretrained
from hsa_core.model import HSALanguageModel, load_pretrained
from hsa_core.plugins import PluginHost

Layout = Callable[..., dict[str, Any]]


@pytest.fixture
def saved(tiny: Layout, host: PluginHost, tmp_path: Path) -> Path:
    return save_pretrained(HSALanguageModel.from_spec(tiny(), host=host), tmp_path / "m")


def _damage(d: Path, how: str) -> None:
    weights, config = d / "model.safetensors", d / "config.json"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":
        weights.write_bytes(bytes(range(256)) * 16)
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "no weights":
        weights.unlink()
    elif how == "wrong shape":
        state = load_file(str(weights))
        key = next(k for k, v in state.items() if v.ndim == 2)
        state[key] = state[key][:-1].contiguous()
        save_file(state, str(weights))
    elif how == "extra tensor":
        state = load_file(str(weights))
        state["surprise"] = state[next(iter(state))]
        save_file({k: v.clone() for k, v in state.items()}, str(weights))
    elif how == "invalid json":
        config.write_text('{"version": 1,')
        (d / "config.yaml").unlink()
    elif how == "json not a mapping":
        config.write_text("[1, 2]")
        (d / "config.yaml").unlink()
    elif how == "binary json":
        config.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
        (d / "config.yaml").unlink()
    elif how == "no config":
        config.unlink()
        (d / "config.yaml").unlink()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "no weights", "wrong shape", "extra tensor",
                                 "invalid json", "json not a mapping", "binary json", "no config"])
def test_from_pretrained_raises_hsa_error_naming_the_directory(saved: Path, host: PluginHost, how: str) -> None:
    _damage(saved, how)
    with pytest.raises(InvalidFileError) as info:
        HSALanguageModel.from_pretrained(saved, host=host)
    assert isinstance(info.value, HSAError) and str(saved) in str(info.value)
    assert len(str(info.value)) < 800


def test_not_a_directory_is_an_hsa_error(tmp_path: Path, host: PluginHost) -> None:
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "missing"):
        with pytest.raises(InvalidFileError, match="not a model directory"):
            load_pretrained(path, host=host)


def test_edited_yaml_that_disagrees_with_json_is_refused(saved: Path, host: PluginHost) -> None:
    doc = yaml.safe_load((saved / "config.yaml").read_text())
    doc["model"]["d_model"] = 64
    (saved / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidFileError, match=r"disagree at 'model\.d_model'.*delete config\.json"):
        read_config(saved)
    # following the message: delete config.json, and the edited YAML is what loads
    (saved / "config.json").unlink()
    assert read_config(saved)["model"]["d_model"] == 64


def test_an_unedited_directory_has_agreeing_configs(saved: Path) -> None:
    assert read_config(saved) == json.loads((saved / "config.json").read_text())


def test_file_modes_follow_the_umask(tiny: Layout, host: PluginHost, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        d = save_pretrained(HSALanguageModel.from_spec(tiny(), host=host), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()}
    assert modes == {"config.yaml": 0o644, "config.json": 0o644, "model.safetensors": 0o644}, modes
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_missing_plugin_is_named_from_the_config(saved: Path) -> None:
    bare = PluginHost()  # only the built-in layers: the 'toy' backbone's plugin is not installed
    bare.register_plugin(builtin_plugin, name="hsa_builtin_layers")
    with pytest.raises(SpecError, match=r"kind 'toy' comes from plugin 'toy_plugin'.*not installed"):
        load_pretrained(saved, host=bare)


def test_third_party_missing_dependency_names_its_own_package() -> None:
    from hsa_core.errors import MissingDependencyError, _package_for, require

    assert _package_for("hsa_backbones.fla_adapters") == "hsa-toolkit"
    assert _package_for("hsa_minlstm.mixer") == "hsa-minlstm"  # installed by make setup
    assert _package_for("hsa_plugin_my_file") is None  # a --plugin file belongs to no package
    with pytest.raises(MissingDependencyError) as info:
        require("hsa_no_such_module", what="backbone 'x'", extra="gpu", package="my-rnn")
    assert "pip install 'my-rnn[gpu]'" in str(info.value)
    with pytest.raises(MissingDependencyError) as info:
        require("hsa_no_such_module", what="backbone 'x'", extra="gpu")  # called from this test module
    assert "hsa-toolkit[gpu]" not in str(info.value) and "pip install hsa_no_such_module" in str(info.value)


def test_plugin_install_hint_uses_the_plugins_package() -> None:
    from hsa_core.plugins import install_hint

    assert install_hint("hsa_builtin_backbones", "fla", ("fla",)) == "pip install 'hsa-toolkit[fla]'"
    assert install_hint("hsa_minlstm", "fast", ("x",)) == "pip install 'hsa-minlstm[fast]'"
    assert install_hint("path:/tmp/p.py", "fast", ("xmod",)) == "pip install xmod"
