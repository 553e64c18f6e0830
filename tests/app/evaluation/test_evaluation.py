"""Evaluation: segment-wise prefill scores exactly like a full pass, grid bookkeeping, reports, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_app.evaluation import evaluate, format_length, parse_depths, parse_lengths, predict_answers
from hsa_app.tasks import KEY, make_task
from torch import nn
from typer.testing import CliRunner

from hsa_core.model import ModelOutput

TINY = Path(__file__).parents[1] / "training" / "tiny.yaml"


class Oracle(nn.Module):
    """Knows the targets; answers right with probability ``p`` per sample, through a carried
    position like a real cache (so wrong segment bookkeeping would show)."""

    def __init__(self, targets: torch.Tensor, vocab: int, wrong_rows: list[int]) -> None:
        super().__init__()
        self.targets, self.vocab, self.wrong = targets, vocab, wrong_rows
        self.w = nn.Parameter(torch.zeros(()))
        self.calls: list[int] = []

    def forward(self, ids: torch.Tensor, cache: Any = None, return_cache: bool = False) -> ModelOutput:
        pos = 0 if cache is None else cache
        T = ids.shape[1]
        self.calls.append(T)
        tgt = self.targets[:, pos: pos + T].clamp(min=0).clone()
        tgt[self.wrong] = (tgt[self.wrong] + 1) % self.vocab
        return ModelOutput(nn.functional.one_hot(tgt, self.vocab).float(), pos + T)


def test_predict_answers_segments_like_full_pass() -> None:
    task = make_task("passkey", vocab_size=64, num_symbols=16, min_gap=8)
    b = task.sample(3, 100, seed=0)
    oracle = Oracle(b.targets, 64, wrong_rows=[1])
    preds = predict_answers(oracle, b, segment_len=7)
    assert oracle.calls[:2] == [7, 7] and sum(oracle.calls) == 100
    right = preds == b.answers()
    assert right[0].all() and right[2].all() and not right[1].any()


def test_real_model_segmented_equals_full(tiny_model) -> None:
    task = make_task("passkey", vocab_size=96, num_symbols=16, min_gap=16)
    b = task.sample(2, 90, seed=1)
    full = tiny_model(b.input_ids).logits.gather(
        1, b.answer_positions[..., None].expand(-1, -1, 96)).argmax(-1)
    for seg in (13, 32, 4096):
        assert torch.equal(predict_answers(tiny_model, b, segment_len=seg), full)


def test_lm_head_sees_only_the_answer_rows(tiny_model) -> None:
    """The head runs on the answer positions only, never on a segment's (B, L, V) logits."""
    task = make_task("passkey", vocab_size=96, num_symbols=16, min_gap=16)
    b = task.sample(2, 90, seed=1)
    rows: list[int] = []
    hook = tiny_model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        preds = predict_answers(tiny_model, b, segment_len=32)
    finally:
        hook.remove()
    assert rows and max(rows) <= b.answer_positions.numel()
    full = tiny_model(b.input_ids).logits.gather(1, b.answer_positions[..., None].expand(-1, -1, 96)).argmax(-1)
    assert torch.equal(preds, full)


def test_evaluate_grid_and_reduce() -> None:
    task = make_task("passkey", vocab_size=64, num_symbols=16, min_gap=8)

    class Perfect(nn.Module):
        """A passkey oracle: after the repeated marker, continue what followed the first marker."""

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, ids, cache=None, return_cache=False):
            pos, hist = (0, ids) if cache is None else (cache[0], torch.cat([cache[1], ids], 1))
            out = torch.zeros(*ids.shape, 64)
            for b in range(ids.shape[0]):
                keys = (hist[b] == KEY).nonzero()[:, 0].tolist()
                for t in range(ids.shape[1]):
                    a = pos + t
                    seen = [k for k in keys if k <= a]
                    if len(seen) >= 2:
                        out[b, t, hist[b, seen[0] + 1 + a - seen[-1]]] = 1
            return ModelOutput(out, (pos + ids.shape[1], hist))

    res = evaluate(Perfect(), task, [40, 64], [0.0, 0.5, None], samples=5, segment_len=16, device="cpu")
    assert [(c.length, c.depth) for c in res.cells] == [(40, 0.0), (40, 0.5), (40, None), (64, 0.0), (64, 0.5),
                                                        (64, None)]
    assert all(c.accuracy == 1.0 and c.token_accuracy == 1.0 and c.samples == 5 for c in res.cells)
    assert res.by_length() == {40: 1.0, 64: 1.0}
    # two "ranks" each score their half; summing their counts gives the same cells
    halves = [evaluate(Perfect(), task, [40], [0.5], samples=5, rank=r, world_size=2, device="cpu",
                       reduce=lambda t: t) for r in (0, 1)]
    assert sum(h.cells[0].accuracy for h in halves) == pytest.approx(1.0)
    assert all(c.missed == [] for c in res.cells)

    class Blind(Perfect):
        """Always predicts id 0 (PAD), which no answer is (keys are symbols, ids >= NUM_SPECIAL): all missed."""

        def forward(self, ids, cache=None, return_cache=False):
            out = super().forward(ids, cache, return_cache)
            logits = torch.zeros_like(out.logits)
            logits[..., 0] = 1
            return ModelOutput(logits, out.cache)

    blind = evaluate(Blind(), task, [40], [0.5], samples=5, segment_len=16, device="cpu")
    assert blind.cells[0].missed == [0, 1, 2, 3, 4] and blind.to_dict()["cells"][0]["missed"] == [0, 1, 2, 3, 4]
    # each rank marks the samples it scored (rows rank::2); summed over ranks, every sample once
    parts = [evaluate(Blind(), task, [40], [0.5], samples=5, rank=r, world_size=2, device="cpu",
                      reduce=lambda t: t) for r in (0, 1)]
    assert [h.cells[0].missed for h in parts] == [[0, 2, 4], [1, 3]]

    class Shifted(Perfect):
        """Reads the key, then answers each of its tokens with the next id: every sample missed, each
        with its own wrong answer."""

        def forward(self, ids, cache=None, return_cache=False):
            out = super().forward(ids, cache, return_cache)
            return ModelOutput(out.logits.roll(1, dims=-1), out.cache)

    # what was read instead of each missed answer, sample by sample (the cell's seeded samples), in the
    # JSON too, and from two ranks each scoring its half
    shifted = evaluate(Shifted(), task, [40], [0.5], samples=5, segment_len=16, device="cpu")
    from hsa_app.evaluation.core import cell_seed
    g = torch.Generator().manual_seed(cell_seed(1234, 40, 0))
    expected = ((task.sample(5, 40, g, depth=0.5).answers() + 1) % 64).tolist()
    assert shifted.cells[0].missed == [0, 1, 2, 3, 4] and shifted.cells[0].missed_answers == expected
    assert shifted.to_dict()["cells"][0]["missed_answers"] == expected
    parts = [evaluate(Shifted(), task, [40], [0.5], samples=5, rank=r, world_size=2, device="cpu",
                      reduce=lambda t: t) for r in (0, 1)]
    assert [h.cells[0].missed_answers for h in parts] == [expected[0::2], expected[1::2]]


def test_prefill_progress_reports_every_segment_of_every_forward() -> None:
    """``on_prefill``: one event per segment, naming the cell, the samples of the forward and how far it is."""
    from hsa_app.evaluation.core import PrefillProgress

    task = make_task("passkey", vocab_size=64, num_symbols=16, min_gap=8)
    b = task.sample(3, 100, seed=0)
    events: list[PrefillProgress] = []
    evaluate(Oracle(b.targets, 64, wrong_rows=[]), task, [50], [0.5], samples=3, segment_len=16, device="cpu",
             max_batch_tokens=100, on_prefill=events.append)  # 2 samples per forward: forwards of 2 and 1
    assert [(e.first, e.batch, e.tokens) for e in events] == [
        (0, 2, 16), (0, 2, 32), (0, 2, 48), (0, 2, 50), (2, 1, 16), (2, 1, 32), (2, 1, 48), (2, 1, 50)]
    assert {(e.length, e.depth, e.samples, e.total) for e in events} == {(50, 0.5, 3, 50)}


def test_time_limit_keeps_the_lengths_done_and_names_the_rest() -> None:
    task = make_task("passkey", vocab_size=64, num_symbols=16, min_gap=8)
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, ids, cache=None, return_cache=False):
            return ModelOutput(torch.zeros(*ids.shape, 64), None)

    res = evaluate(Constant(), task, [40, 48, 64], [0.5], samples=2, device="cpu", time_limit=0.0)
    # at least the first length is evaluated; later ones are skipped and listed
    assert res.lengths == [40] and [c.length for c in res.cells] == [40]
    assert res.meta["skipped_lengths"] == [48, 64]
    assert set(res.by_length()) == {40}
    full = evaluate(Constant(), task, [40, 48], [0.5], samples=2, device="cpu", time_limit=1e9)
    assert full.lengths == [40, 48] and "skipped_lengths" not in full.meta


def test_parsers() -> None:
    assert parse_lengths("512, 1k,2K,1m") == [512, 1024, 2048, 1 << 20]
    assert parse_lengths("1.5k") == [1536]
    assert [format_length(n) for n in (512, 1024, 4096, 1 << 20, 1000)] == ["512", "1k", "4k", "1m", "1000"]
    assert parse_depths("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("x", "", "0.5k1"):
        with pytest.raises(ValueError):
            parse_lengths(bad)
    with pytest.raises(ValueError):
        parse_depths("1.5")


def test_cli_train_then_eval(tmp_path: Path) -> None:
    from hsa_cli.app import app

    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(TINY), "--out", str(run), "--seq-len", "48", "--steps", "3",
                            "--batch-size", "2", "--task-option", "num_symbols=16", "--no-progress",
                            "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "passkey", str(run), "--lengths", "48,96", "--depths", "0.2,0.8",
                            "--samples", "3", "--segment-len", "32"])
    assert r.exit_code == 0, r.output
    assert "exact match" in r.output and "96" in r.output
    data = json.loads((run / "eval_passkey.json").read_text())
    assert data["lengths"] == [48, 96] and len(data["cells"]) == 4
    assert data["task_options"]["num_symbols"] == 16  # taken from the training run
    assert data["meta"]["train_seq_len"] == 48
    png = (run / "eval_passkey.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # other tasks evaluate the same model (options default from the model)
    r = runner.invoke(app, ["eval", "niah_multikey", str(run), "--lengths", "96", "--depths", "0.5", "--samples",
                            "2"])
    assert r.exit_code == 0, r.output
    # usage errors: one line, exit 2
    r = runner.invoke(app, ["eval", "passkey", str(run), "--lengths", "abc"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["eval", "passkey", str(tmp_path / "missing")])
    assert r.exit_code == 2
    r = runner.invoke(app, ["train", str(TINY), "--out", str(run), "--steps", "1"])
    assert r.exit_code == 2 and "--resume" in r.output
    assert "partial" not in data["meta"]  # the finished grid
    assert data["meta"]["offload"] is False and data["meta"]["offload_landmarks"] is None
    # a run stopped after its first cell (a kill, a time limit) leaves that cell on disk, marked partial
    from hsa_app.evaluation import run_eval

    class Stop(Exception):
        pass

    def stop_after_one(cell) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_eval(run, "passkey", [48, 96], [0.2, 0.8], samples=2, segment_len=32, out=tmp_path / "cut",
                 on_cell=stop_after_one)
    cut = json.loads((tmp_path / "cut" / "eval_passkey.json").read_text())
    assert cut["meta"]["partial"] is True and cut["lengths"] == [48]
    assert [(c["length"], c["depth"], c["samples"]) for c in cut["cells"]] == [(48, 0.2, 2)]
    # with the footprint of the length so far (a 64M prefill stopped by its limit lost it: H200 run 11)
    assert list(cut["meta"]["footprint"]) == ["48"] and cut["meta"]["footprint"]["48"]["prefill_tokens"] == 2 * 48
    assert not (tmp_path / "cut" / "eval_passkey.png").exists()


def test_wilson_interval_and_where_it_is_reported() -> None:
    from hsa_app.evaluation import core
    from hsa_app.evaluation.report import interval_note

    lo, hi = core.wilson_interval(36, 40)
    assert (round(lo, 4), round(hi, 4)) == (0.7695, 0.9604)  # 90% of 40: 77-96%
    assert core.wilson_interval(40, 40)[1] == 1.0 and core.wilson_interval(40, 40)[0] == pytest.approx(0.9124, abs=1e-4)
    assert core.wilson_interval(0, 40)[0] == 0.0 and core.wilson_interval(0, 0) == (0.0, 1.0)
    # shrinks as samples grow, always around the observed rate
    for n in (10, 100, 1000):
        a, b = core.wilson_interval(0.8 * n, n)
        assert a < 0.8 < b
    assert core.wilson_interval(800, 1000)[1] - core.wilson_interval(800, 1000)[0] < 0.06
    cells = [core.CellResult(4096, 0.1, 40, 0.825, 0.9, 1.0), core.CellResult(4096, 0.5, 40, 0.95, 0.97, 1.0)]
    result = core.EvalResult("passkey", {}, [4096], [0.1, 0.5], cells)
    d = result.to_dict()
    assert d["cells"][0]["accuracy_ci95"] == [round(v, 4) for v in core.wilson_interval(33, 40)]
    assert "lowest cell, 82.5%: 68-91%" in interval_note(result)
    assert interval_note(core.EvalResult("passkey", {}, [4096], [0.1])) == ""
