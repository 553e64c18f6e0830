"""Synthetic tasks: determinism, layout invariants, answer bookkeeping, plugin registration."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hsa_app.tasks import IGNORE_INDEX, KEY, NUM_SPECIAL, QUERY, Task, TaskBatch, make_task, registry, task_names
from hsa_app.tasks.base import NEEDLE
from hsa_app.tasks.passkey import PasskeyTask

import hsa_core
from hsa_core.plugins import PluginHost

BUILTINS = ["mqar", "niah", "niah_multikey", "passkey", "variable_tracking"]


def test_builtins_registered() -> None:
    assert set(BUILTINS) <= set(task_names())


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("seq_len", [97, 256])
def test_batch_invariants(name: str, seq_len: int) -> None:
    task = make_task(name, vocab_size=300, min_gap=32)
    b = task.sample(5, seq_len, seed=3)
    assert b.input_ids.shape == (5, seq_len) and b.input_ids.dtype == torch.long
    assert int(b.input_ids.min()) >= 0 and int(b.input_ids.max()) < 300
    assert torch.equal(b.targets[:, :-1], b.input_ids[:, 1:])
    assert (b.targets[:, -1] == IGNORE_INDEX).all()
    assert b.answer_positions.shape == (5, task.num_answers)
    assert b.answer_mask.sum(1).tolist() == [task.num_answers] * 5
    assert b.answer_mask.gather(1, b.answer_positions).all()
    # Answers are symbols and they end the sequence (teacher-forced question at the end).
    ans = b.answers()
    assert ((ans >= NUM_SPECIAL) & (ans < task.filler_low)).all()
    assert int(b.answer_positions.max()) == seq_len - 2
    assert ((b.depth >= 0) & (b.depth <= 1)).all()


@pytest.mark.parametrize("name", BUILTINS)
def test_deterministic_from_seed(name: str) -> None:
    task = make_task(name, vocab_size=300, min_gap=16)
    a, b, c = (task.sample(3, 200, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.answer_positions, b.answer_positions)
    assert not torch.equal(a.input_ids, c.input_ids)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(task.sample(2, 150, g1).input_ids, task.sample(2, 150, g2).input_ids)


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_passkey_protocol(depth: float) -> None:
    S = 16
    task = make_task("passkey", vocab_size=512, key_len=5, min_gap=2 * S)
    T = 300
    b = task.sample(4, T, seed=1, depth=depth)
    for i in range(4):
        row = b.input_ids[i]
        k = int((row == KEY).nonzero()[0, 0])
        (q,) = (row == QUERY).nonzero()[:, 0].tolist()
        assert q == T - 7 and row[q + 1] == KEY                   # the question repeats the marker
        assert int((row == KEY).sum()) == 2
        key = row[k + 1: k + 6]
        assert torch.equal(row[q + 2:], key)                      # the answer is the passkey
        assert torch.equal(b.answers()[i], key)
        assert q - (k + 6) >= 2 * S                                # at least two chunks before the end
        assert abs(float(b.depth[i]) - depth) < 0.01
    # depth 0 puts the key right after BOS; depth 1 as late as the gap allows
    if depth == 0.0:
        assert int((b.input_ids[0] == KEY).nonzero()[0]) == 1


def test_depth_spreads_when_none() -> None:
    b = make_task("passkey", vocab_size=512).sample(64, 400, seed=0)
    assert float(b.depth.min()) < 0.2 and float(b.depth.max()) > 0.8


def test_repeat_filler_is_periodic_and_random_is_not() -> None:
    t = make_task("passkey", vocab_size=512, filler="repeat", filler_period=7)
    row = t.sample(1, 200, seed=0, depth=1.0).input_ids[0, 1:100]
    assert torch.equal(row[:-7], row[7:])
    r = make_task("passkey", vocab_size=512, filler="random").sample(1, 200, seed=0, depth=1.0).input_ids[0, 1:100]
    assert not torch.equal(r[:-7], r[7:])
    c = make_task("passkey", vocab_size=512, filler="copy", filler_period=9).sample(2, 200, seed=0, depth=1.0)
    assert torch.equal(c.input_ids[:, 1:100][:, :-9], c.input_ids[:, 1:100][:, 9:])   # periodic...
    assert not torch.equal(c.input_ids[0, 1:10], c.input_ids[1, 1:10])               # ...per sample


def test_multikey_needles_distinct_and_query_matches_one() -> None:
    t = make_task("niah_multikey", vocab_size=512, num_needles=5, value_len=3, min_gap=16)
    b = t.sample(8, 256, seed=2)
    for i in range(8):
        row = b.input_ids[i]
        starts = (row == NEEDLE).nonzero()[:, 0]
        assert len(starts) == 5
        keys = row[starts + 1]
        assert len(set(keys.tolist())) == 5
        qkey = row[-4]
        (j,) = (keys == qkey).nonzero()[:, 0].tolist()
        assert torch.equal(row[starts[j] + 2: starts[j] + 5], row[-3:])


def test_variable_tracking_chain_is_consistent() -> None:
    t = make_task("variable_tracking", vocab_size=512, num_chains=3, num_hops=4, min_gap=16)
    b = t.sample(6, 300, seed=4)
    for i in range(6):
        row = b.input_ids[i].tolist()
        assign = {row[s + 2]: row[s + 1] for s in range(len(row) - 3) if row[s] == 5}  # ASSIGN src dst
        val, names = row[-5], row[-4:]
        # follow the chain: x1 = val, x2 = x1, ...
        prev = val
        for name in names:
            assert assign[name] == prev
            prev = name
        # and the statements appear in chain order
        pos = [next(s for s in range(len(row) - 3) if row[s] == 5 and row[s + 2] == n) for n in names]
        assert pos == sorted(pos)


def test_mqar_values_match_keys() -> None:
    t = make_task("mqar", vocab_size=512, num_pairs=6, num_queries=3, min_gap=8)
    b = t.sample(4, 128, seed=0)
    for i in range(4):
        row = b.input_ids[i].tolist()
        k = row.index(KEY)
        pairs = dict(zip(row[k + 1: k + 13: 2], row[k + 2: k + 13: 2]))
        tail = row[-6:]
        for a, v in zip(tail[0::2], tail[1::2]):
            assert pairs[a] == v


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="shorter than the minimum"):
        make_task("passkey", min_gap=64).sample(1, 50)
    with pytest.raises(ValueError, match="did you mean 'key_len'"):
        PasskeyTask(key_lenn=3)
    with pytest.raises(KeyError, match="did you mean 'passkey'"):
        make_task("paskey")
    with pytest.raises(ValueError, match="depth"):
        make_task("passkey").sample(1, 200, depth=1.5)


def test_concat_time_shifts_answers() -> None:
    t = make_task("passkey", vocab_size=512, min_gap=8)
    a, b = t.sample(2, 64, seed=0), t.sample(2, 80, seed=1)
    c = TaskBatch.concat_time([a, b])
    assert c.input_ids.shape == (2, 144)
    assert torch.equal(c.targets[:, :-1], c.input_ids[:, 1:])
    assert torch.equal(c.answers(), torch.cat([a.answers(), b.answers()], 1))


def test_a_plugin_can_register_a_task() -> None:
    class CopyTask(Task):
        """Copy the first symbol to the end."""

        name: ClassVar[str] = "copy_first"
        defaults: ClassVar[dict[str, Any]] = {}

        @property
        def num_answers(self) -> int:
            return 1

        def min_length(self) -> int:
            return 4

        def _fill(self, row, g, depth):
            s = self.symbols(g, 1)
            row[1], row[-2], row[-1] = s, QUERY, s
            return [row.numel() - 2], 0.0

    class Plugin:
        @hsa_core.hookimpl
        def hsa_register_tasks(self, register):
            register("copy_first", CopyTask, description="copy", defaults=CopyTask.all_defaults())

    host = PluginHost()
    host.load_entry_points()
    host.register_plugin(Plugin(), name="my_tasks")
    reg = registry(host)
    assert "copy_first" in reg and "passkey" in reg
    assert reg.entry("copy_first").plugin == "my_tasks"
    assert reg.entry("passkey").plugin == "hsa_builtin_tasks"
    task = reg.get("copy_first").factory(vocab_size=128)
    b = task.sample(2, 10, seed=0)
    assert torch.equal(b.answers()[:, 0], b.input_ids[:, 1])
