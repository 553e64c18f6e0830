"""The built-in backbone plugin: registration through the entry point, metadata, defaults, laziness."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hsa_backbones import plugin

from hsa_core.interfaces import Mixer
from hsa_core.plugins import PluginHost, backbones

BUILTINS = {"mamba", "mamba2", "gla", "rwkv6", "rwkv7", "swa", "attention"}


def test_entry_point_registers_every_builtin_with_provenance() -> None:
    registry = backbones()
    assert set(registry.names()) >= BUILTINS
    for name in BUILTINS:
        entry = registry.entry(name)
        assert entry.plugin == "hsa_builtin_backbones"
        assert entry.info.description and entry.info.defaults


def test_metadata() -> None:
    host = PluginHost()
    host.register_plugin(plugin, name="builtins")
    registry = host.backbone_registry()
    assert set(registry.names()) == BUILTINS
    for name in ("gla", "rwkv6", "rwkv7"):
        assert registry.get(name).requires == ("fla",) and registry.get(name).extra == "fla"
    for name in ("mamba", "mamba2"):  # run everywhere; the extra only brings CUDA kernels
        assert registry.get(name).requires == () and registry.get(name).extra == "mamba"
    for name in ("swa", "attention"):
        assert registry.get(name).requires == () and registry.get(name).extra is None
    d = registry.get("mamba2").defaults
    got = (d["d_state"], d["d_conv"], d["expand"], d["headdim"], d["ngroups"], d["chunk_size"])
    assert got == (128, 4, 2, 64, 1, 256)
    assert {"num_heads", "num_kv_heads", "window", "rope_theta", "qk_norm"} <= set(registry.get("swa").defaults)


@pytest.mark.parametrize("name", sorted(BUILTINS - {"gla", "rwkv6", "rwkv7"}))
def test_every_option_in_defaults_is_accepted_and_unknown_ones_are_not(name: str) -> None:
    info = backbones().get(name)
    with torch.device("meta"):
        mixer = info.factory(256, **info.defaults)
        assert isinstance(mixer, Mixer) and mixer.d_model == 256
        with pytest.raises(TypeError):
            info.factory(256, not_an_option=1)


@pytest.mark.slow
def test_importing_the_plugin_imports_no_optional_library() -> None:
    """``hsa list`` must not pay for (or fail on) fla or mamba-ssm."""
    code = textwrap.dedent("""
        import sys
        import hsa_backbones.plugin
        from hsa_core.plugins import backbones
        backbones().names()
        heavy = [m for m in ("fla", "mamba_ssm", "transformers", "triton") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
