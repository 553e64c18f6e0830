"""Launch tables for mamba-ssm's and fla's kernels: narrowing, the fallback candidate, the environment
switches, and the shipped table against the installed libraries' own candidate lists."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hsa_backbones import launch_tables as lt
from hsa_backbones.fast_paths import causal_conv_kernel, mamba_triton
from hsa_backbones.fla_adapters import import_fla_layers

from hsa_core.errors import HSAError
from tests.optional_deps import skip_unless_required

pytestmark = [pytest.mark.triton]


@pytest.fixture(scope="module")
def kernels() -> Iterator[dict[str, Any]]:
    """Every mamba-ssm and fla autotuner, imported; their candidate lists are restored afterwards."""
    try:
        if mamba_triton() is None:
            skip_unless_required("mamba-ssm is not installed")
        causal_conv_kernel()
        import_fla_layers("the launch-table tests")
    except ImportError as exc:
        skip_unless_required(f"fla is not installed: {exc}")
    tuners = dict(lt.autotuners(["mamba_ssm", "fla"]))
    saved = {name: list(t.configs) for name, t in tuners.items()}
    yield tuners
    for name, t in tuners.items():
        t.configs = saved[name]


@pytest.fixture
def restore(kernels: dict[str, Any]) -> Iterator[None]:
    saved = {name: list(t.configs) for name, t in kernels.items()}
    yield
    for name, t in kernels.items():
        t.configs = saved[name]


def _many(kernels: dict[str, Any], minimum: int = 4) -> tuple[str, Any]:
    return next((n, t) for n, t in kernels.items() if n.startswith("mamba_ssm.") and len(t.configs) >= minimum)


def test_autotuners_are_named_by_module_and_attribute(kernels: dict[str, Any]) -> None:
    names = set(kernels)
    assert "mamba_ssm.ops.triton.ssd_chunk_scan._chunk_scan_fwd_kernel" in names
    assert any(n.startswith("fla.ops.gla.") for n in names)  # found through @triton.heuristics wrappers too
    assert len(names) == len({id(t) for t in kernels.values()})


def test_narrow_keeps_the_recorded_winner_and_the_safest_candidate(kernels: dict[str, Any], restore: None) -> None:
    name, tuner = _many(kernels)
    candidates = list(tuner.configs)
    safest = lt.safest_config(candidates)
    winner = next(c for c in candidates if c is not safest)
    table = {name: [lt.config_record(winner)]}
    assert lt.narrow(["mamba_ssm"], table) == 1
    assert tuner.configs == [winner, safest]
    assert lt.narrow(["mamba_ssm"], table) == 1 and tuner.configs == [winner, safest]  # idempotent
    # the safest candidate needs the least shared memory (stages x tile product) of all
    assert _smem(safest) == min(_smem(c) for c in candidates)


def _smem(config: Any) -> int:
    tiles = 1
    for value in config.kwargs.values():
        if isinstance(value, int) and not isinstance(value, bool):
            tiles *= value
    return config.num_stages * tiles


def test_the_safest_matmul_candidate_is_a_small_tile(kernels: dict[str, Any]) -> None:
    """mamba-ssm's chunk-scan forward: its largest tiles (128 x 256 x 64) overflowed the H200's shared
    memory while recording; the fallback must be one of its smallest."""
    tuner = next(t for n, t in kernels.items() if n.endswith("ssd_chunk_scan._chunk_scan_fwd_kernel"))
    safest = lt.safest_config(list(tuner.configs))
    blocks = [v for v in safest.kwargs.values() if isinstance(v, int)]
    assert max(blocks) <= 64 and _smem(safest) < max(_smem(c) for c in tuner.configs) / 4


def test_narrow_never_introduces_a_configuration(kernels: dict[str, Any], restore: None) -> None:
    name, tuner = _many(kernels)
    before = list(tuner.configs)
    foreign = {**lt.config_record(before[0]), "num_warps": 64}  # not one of the library's candidates
    assert lt.narrow(["mamba_ssm"], {name: [foreign]}) == 0
    assert tuner.configs == before
    assert lt.narrow(["mamba_ssm"], {"mamba_ssm.no_such_kernel": [lt.config_record(before[0])]}) == 0


def test_environment_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert lt.table_for_this_gpu() is None  # no CUDA here and no override
    monkeypatch.setenv(lt.ENV_AUTOTUNE, "sometimes")
    with pytest.raises(HSAError, match="HSA_AUTOTUNE='sometimes' is not allowed"):
        lt.table_for_this_gpu()
    monkeypatch.setenv(lt.ENV_AUTOTUNE, "full")
    assert lt.describe_launch_table().startswith("full autotuning (HSA_AUTOTUNE=full)")
    monkeypatch.delenv(lt.ENV_AUTOTUNE)
    bad = tmp_path / "table.json"
    bad.write_text('{"arch": "sm90"}')
    monkeypatch.setenv(lt.ENV_TABLE, str(bad))
    with pytest.raises(HSAError, match="not a readable launch table"):
        lt.table_for_this_gpu()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"kernels": {"k": []}}))
    monkeypatch.setenv(lt.ENV_TABLE, str(good))
    assert lt.table_for_this_gpu() == (str(good), {"k": []})


SHIPPED = sorted(p.name for p in (resources.files("hsa_backbones") / "launch_tables").iterdir()
                 if p.name.endswith(".json"))


def _shipped(table: str) -> dict[str, Any]:
    return json.loads((resources.files("hsa_backbones") / "launch_tables" / table).read_text())


@pytest.mark.parametrize("table", SHIPPED)
def test_shipped_table_names_the_installed_kernels_and_their_tunables(kernels: dict[str, Any], table: str) -> None:
    """Every kernel of a shipped table still exists, with the same tunable parameters: a table that
    drifted from the installed mamba-ssm or fla would silently stop narrowing (the first step grows to
    minutes). The candidate *values* depend on the GPU (fla sizes its lists by shared memory and
    architecture), so membership itself is checked on the GPU (tests/backbones/test_gpu.py)."""
    data = _shipped(table)
    assert data["kernels"] and data["arch"] == table.removesuffix(".json")
    for name, configs in data["kernels"].items():
        assert name in kernels, f"{table}: {name} is no longer an autotuned kernel of the installed libraries"
        tunables = {frozenset(c.kwargs) for c in kernels[name].configs}
        for config in configs:
            assert frozenset(config["kwargs"]) in tunables, f"{table}: {name}: {config} has other tunables"
