"""``bench/model/record_launch_table.py`` on CPU: the probe of a layout, sharding with the fallback
candidate, the per-key timing log (a real mamba-ssm kernel autotuned under Triton's interpreter, with
made-up timings), and the merge that keeps the fastest configuration per kernel and key."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_backbones import launch_tables as lt
from hsa_backbones.fast_paths import mamba_triton
from triton.runtime import autotuner

from hsa_core.layout import resolve
from tests.optional_deps import skip_unless_required

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("record_launch_table", ROOT / "bench/model/record_launch_table.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)
CUMSUM = "mamba_ssm.ops.triton.ssd_chunk_state._chunk_cumsum_fwd_kernel"


def test_probe_keeps_one_block_of_each_backbone_kind() -> None:
    from hsa_cli._common import load_spec_from

    _, raw = load_spec_from("ramba-370m", [])
    spec = resolve(raw)
    probe = resolve(record.probe_spec(spec))
    assert [layer["kind"] for layer in probe["layers"]] == ["mamba2"]
    assert probe["memories"] == {} and probe["model"] == spec["model"]


@pytest.mark.triton
def test_shards_time_their_candidates_and_the_merge_keeps_the_fastest(
        interpreter: None, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = mamba_triton()
    if kernels is None:
        skip_unless_required("mamba-ssm is not installed")
    tuners = dict(lt.autotuners(["mamba_ssm"]))
    saved = {name: (list(t.configs), dict(t.cache)) for name, t in tuners.items()}
    # made-up timings: fewer warps is faster, so the winner of each shard is known
    monkeypatch.setattr(autotuner.Autotuner, "_bench", lambda self, *a, config, **k: [float(config.num_warps)] * 3)
    shards = []
    try:
        for shard in range(2):
            for t in tuners.values():
                t.cache.clear()
                t.__dict__.pop("_hsa_logged", None)
                t.__dict__.pop("_bench", None)
            log: dict[str, Any] = {}
            record._shard_and_log(shard, 2, log)
            tuner = tuners[CUMSUM]
            assert len(tuner.configs) >= 2  # a shard never leaves a kernel a single candidate
            from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd

            dt = torch.rand(1, 20, 2)
            _chunk_cumsum_fwd(dt, -torch.rand(2), chunk_size=8)
            assert CUMSUM in log
            (key, timings), = log[CUMSUM].items()
            assert len(timings) == len(tuner.configs)  # every candidate of this shard timed once
            shards.append({"arch": "sm00", "device": "cpu", "versions": {}, "recorded_from": [],
                           "timings": log})
    finally:
        for name, t in tuners.items():
            t.configs, cache = saved[name]
            t.cache.clear()
            t.cache.update(cache)
            t.__dict__.pop("_hsa_logged", None)
            t.__dict__.pop("_bench", None)
    table = record.merge(shards)
    (config,) = table["kernels"][CUMSUM]
    fewest = min(c.num_warps for c in saved[CUMSUM][0])
    assert config["num_warps"] == fewest
    assert table["best_ms"][CUMSUM][key] == float(fewest)


def test_merge_refuses_mixed_architectures() -> None:
    one = {"arch": "sm90", "device": "x", "versions": {}, "recorded_from": [], "timings": {}}
    with pytest.raises(SystemExit, match="different architectures"):
        record.merge([one, {**one, "arch": "sm80"}])


def test_merge_keeps_one_winner_per_key() -> None:
    a, b = json.dumps({"n": 1}), json.dumps({"n": 2})
    shard = {"arch": "sm90", "device": "x", "versions": {}, "recorded_from": []}
    table = record.merge([{**shard, "timings": {"k": {"[1]": {a: 2.0}, "[2]": {a: 1.0}}}},
                          {**shard, "timings": {"k": {"[1]": {b: 1.5}, "[2]": {b: 3.0}}}}])
    assert table["kernels"]["k"] == [{"n": 1}, {"n": 2}]  # b wins key [1], a wins key [2]
    assert table["best_ms"]["k"] == {"[1]": 1.5, "[2]": 1.0}
