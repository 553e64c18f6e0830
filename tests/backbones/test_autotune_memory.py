"""Autotuning decisions kept across processes: what is stored, what is reused (same source, key and
candidates only), and that Triton then runs the stored choice, hook included, without timing anything."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import triton
import triton.language as tl
from hsa_backbones import autotune_memory as am

pytestmark = [pytest.mark.triton]


def _zero_out(nargs: dict[str, Any]) -> None:  # a pre_hook as mamba-ssm's: zero what the kernel adds into
    nargs["out_ptr"].zero_()


def _configs(blocks: tuple[int, ...] = (4, 8)) -> list[triton.Config]:
    return [triton.Config({"BLOCK": b}, num_warps=1, pre_hook=_zero_out) for b in blocks]


@triton.jit
def _add_one(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(out_ptr + offs, mask=mask) + tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


@triton.jit
def _add_two(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(out_ptr + offs, mask=mask) + tl.load(x_ptr + offs, mask=mask) + 2, mask=mask)


def _tuner(fn: Any = _add_one, blocks: tuple[int, ...] = (4, 8)) -> Any:
    """A fresh autotuner (empty cache) over ``fn``, as a library defines one."""
    return triton.autotune(configs=_configs(blocks), key=["n"])(fn)


def _run(tuner: Any, n: int = 10) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float32)
    out = torch.full((n,), 100.0)  # the hook must zero it first
    tuner[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, out, n)
    return out


def _decide(tuner: Any, key: tuple, index: int) -> None:
    """What Triton's timing would leave behind: the key's choice in the autotuner's cache."""
    tuner.cache[key] = tuner.configs[index]


KEY = (10, "torch.float32", "torch.float32")


def test_a_stored_decision_comes_back_as_the_new_tuners_own_candidate(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    first = _tuner()
    _decide(first, KEY, 1)
    assert am.save_decisions([("pkg.kernel", first)], path) == 1
    second = _tuner()
    assert am.load_decisions([("pkg.kernel", second)], path) == 1
    assert second.cache[KEY] is second.configs[1]  # the object with its hook, not one rebuilt from JSON
    assert second.cache[KEY].pre_hook is _zero_out


def test_the_stored_choice_runs_without_timing_and_with_its_hook(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "decisions.json"
    first = _tuner()
    _decide(first, KEY, 1)
    am.save_decisions([("pkg.kernel", first)], path)
    second = _tuner()
    am.load_decisions([("pkg.kernel", second)], path)

    def no_timing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the kernel was timed although a stored decision holds")

    monkeypatch.setattr(second, "_bench", no_timing)
    out = _run(second)
    assert second.best_config is second.configs[1]
    torch.testing.assert_close(out, torch.arange(10, dtype=torch.float32) + 1)  # the hook zeroed the 100s


@pytest.mark.parametrize("change", ["candidates", "source", "key"])
def test_a_decision_is_reused_only_for_the_same_candidates_source_and_key(tmp_path: Path, change: str) -> None:
    path = tmp_path / "decisions.json"
    first = _tuner()
    _decide(first, KEY, 0)
    am.save_decisions([("pkg.kernel", first)], path)
    second = _tuner(blocks=(4, 16)) if change == "candidates" else _tuner(_add_two) if change == "source" else _tuner()
    loaded = am.load_decisions([("pkg.kernel", second)], path)
    if change == "key":
        assert loaded == 1 and (11, "torch.float32", "torch.float32") not in second.cache
    else:
        assert loaded == 0 and second.cache == {}


def test_saving_merges_with_other_processes_and_drops_another_sources_entries(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    a, b = _tuner(), _tuner()
    _decide(a, KEY, 0)
    _decide(b, (12, "torch.float32", "torch.float32"), 1)
    am.save_decisions([("pkg.kernel", a)], path)
    assert am.save_decisions([("pkg.kernel", b)], path) == 2  # a's decision kept beside b's
    changed = _tuner(_add_two)
    _decide(changed, KEY, 1)
    assert am.save_decisions([("pkg.kernel", changed)], path) == 1  # the old source's entries are gone
    entries = json.loads(path.read_text())["pkg.kernel"]["entries"].values()
    assert [e["config"]["kwargs"] for e in entries] == [{"BLOCK": 8}]
    assert not list(tmp_path.glob("*.tmp"))


def test_keys_json_cannot_give_back_are_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    tuner = _tuner()
    _decide(tuner, (10, (1, 2)), 0)  # a nested tuple would come back as a list
    assert am.save_decisions([("pkg.kernel", tuner)], path) == 0


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"pkg.kernel": {"source": 3}}'])
def test_a_missing_or_damaged_file_means_timing_as_usual(tmp_path: Path, content: str) -> None:
    path = tmp_path / "decisions.json"
    if content:
        path.write_text(content)
    tuner = _tuner()
    assert am.load_decisions([("pkg.kernel", tuner)], path) == 0 and tuner.cache == {}
    _decide(tuner, KEY, 0)
    assert am.save_decisions([("pkg.kernel", tuner)], path) == 1  # and the next save repairs it


def test_remember_decisions_loads_the_packages_kernels_and_saves_them_at_exit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooked kernels (Triton never disk-caches them) and plain ones (its disk cache missed some on the
    H200) alike."""
    path = tmp_path / "decisions.json"
    previous = _tuner()
    _decide(previous, KEY, 1)
    am.save_decisions([("fake_pkg.ops.hooked", previous)], path)

    module = types.ModuleType("fake_pkg.ops")
    module.hooked = _tuner()
    module.plain = triton.autotune(configs=[triton.Config({"BLOCK": 4}), triton.Config({"BLOCK": 8})],
                                   key=["n"])(_add_two)
    monkeypatch.setitem(sys.modules, "fake_pkg.ops", module)
    monkeypatch.setattr(am, "enabled", lambda: True)
    monkeypatch.setattr(am, "decisions_file", lambda: path)
    monkeypatch.setattr(am, "_tracked", {})
    monkeypatch.setattr(am, "_walked", {})
    monkeypatch.setattr(am, "_registered", True)  # the test saves by hand instead of at exit

    assert am.remember_decisions(["fake_pkg"]) == 1
    assert module.hooked.cache[KEY] is module.hooked.configs[1]
    assert set(am._tracked) == {"fake_pkg.ops.hooked", "fake_pkg.ops.plain"}
    assert am.remember_decisions(["fake_pkg"]) == 0  # nothing imported since: not walked again
    _decide(module.hooked, (12, "torch.float32", "torch.float32"), 0)
    _decide(module.plain, KEY, 1)
    am._save_at_exit()
    stored = json.loads(path.read_text())
    assert len(stored["fake_pkg.ops.hooked"]["entries"]) == 2 and len(stored["fake_pkg.ops.plain"]["entries"]) == 1


def test_off_without_triton_disk_caching(monkeypatch: pytest.MonkeyPatch) -> None:
    from triton import knobs

    monkeypatch.setattr(knobs.autotuning, "cache", False)
    assert not am.enabled()
    monkeypatch.setattr(knobs.autotuning, "cache", True)
    assert am.enabled() is (not knobs.runtime.interpret)


def test_describe_says_where_and_how_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(am, "enabled", lambda: False)
    assert am.describe() == "not kept (TRITON_CACHE_AUTOTUNING=1 keeps them)"
    path = tmp_path / "decisions.json"
    tuner = _tuner()
    _decide(tuner, KEY, 0)
    _decide(tuner, (12, "torch.float32", "torch.float32"), 1)
    am.save_decisions([("pkg.kernel", tuner)], path)
    monkeypatch.setattr(am, "enabled", lambda: True)
    monkeypatch.setattr(am, "decisions_file", lambda: path)
    assert am.describe() == f"kept in {path} (2 decisions of 1 kernels)"


def test_a_kernel_triton_cannot_hash_is_timed_as_usual(tmp_path: Path) -> None:
    """JITFunction.cache_key walks the kernel's dependencies and raises on some (an interpreted function):
    such a kernel is neither stored nor loaded, and nothing raises."""

    class Unhashable:
        @property
        def cache_key(self) -> str:
            raise RuntimeError("Unsupported function referenced")

    tuner = types.SimpleNamespace(fn=Unhashable(), configs=_configs(), cache={})
    _decide(tuner, KEY, 0)
    path = tmp_path / "decisions.json"
    assert am.save_decisions([("pkg.kernel", tuner)], path) == 0
    assert json.loads(path.read_text()) == {}
    assert am.load_decisions([("pkg.kernel", tuner)], path) == 0


def test_kernels_that_did_not_run_leave_the_stored_decisions_alone(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    first = _tuner()
    _decide(first, KEY, 1)
    am.save_decisions([("pkg.kernel", first)], path)
    unused = _tuner(_add_two)  # another source, but it made no decision in this process
    assert am.save_decisions([("pkg.kernel", unused)], path) == 0
    assert len(json.loads(path.read_text())["pkg.kernel"]["entries"]) == 1
