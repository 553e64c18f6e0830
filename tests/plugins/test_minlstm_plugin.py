"""The example third-party plugin (plugins/hsa-minlstm), as installed: entry point, registry, contract."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

from hsa_core.plugins import PluginHost
from hsa_core.testing import check_mixer

hsa_minlstm = pytest.importorskip("hsa_minlstm", reason="install it: pip install -e plugins/hsa-minlstm")


def test_the_plugin_is_declared_as_an_hsa_entry_point() -> None:
    points = {ep.name: ep for ep in metadata.entry_points(group="hsa")}
    assert points["hsa_minlstm"].value == "hsa_minlstm.plugin"
    assert points["hsa_minlstm"].dist is not None and points["hsa_minlstm"].dist.name == "hsa-minlstm"


def test_entry_point_discovery_registers_minlstm_with_provenance() -> None:
    host = PluginHost()  # a fresh host: nothing registered by hand
    host.load_entry_points()
    entry = host.backbone_registry().entry("minlstm")
    assert entry.plugin == "hsa_minlstm"
    assert entry.info.factory is hsa_minlstm.MinLSTMMixer
    assert entry.info.defaults == hsa_minlstm.MINLSTM_DEFAULTS
    assert entry.info.requires == ()  # pure torch: available everywhere


def test_registered_factory_passes_the_mixer_contract() -> None:
    host = PluginHost()
    host.load_entry_points()
    info = host.backbone_registry().get("minlstm")
    check_mixer(info.factory, d_model=16, options=dict(info.defaults), seq_len=20)


def test_contract_in_bf16_with_loose_tolerance() -> None:
    check_mixer(hsa_minlstm.MinLSTMMixer, d_model=16, dtype=torch.bfloat16, atol=3e-2, rtol=3e-2,
                checks=("forward_shape", "state_layout", "gradients", "segments", "step"))
