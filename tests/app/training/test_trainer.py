"""The trainer: schedule, exact resume after a kill, crash-safe checkpoints, RAMba options, CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_app.runtime import checkpoint as ckpt
from hsa_app.training import TrainConfig, lr_at, train, train_losses
from hsa_app.training.segments import SegmentedForward
from hsa_app.training.trainer import RunExistsError, global_batch, task_for_spec


def small_cfg(**kw: Any) -> TrainConfig:
    base = dict(seq_len=48, batch_size=4, steps=6, lr=3e-3, warmup=2, checkpoint_every=2,
                task_options={"num_symbols": 16}, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1.0, warmup=4, steps=104, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(54, cfg) == pytest.approx(0.55)
    assert lr_at(104, cfg) == pytest.approx(0.1)
    vals = [lr_at(s, cfg) for s in range(4, 105)]
    assert all(a >= b for a, b in itertools.pairwise(vals))


def test_global_batch_is_a_function_of_the_step(tiny_spec: dict[str, Any]) -> None:
    cfg = small_cfg()
    task = task_for_spec(cfg, tiny_spec)
    assert task.options["vocab_size"] == 96 and task.options["min_gap"] == 16  # two chunks of 8
    a, b, c = global_batch(task, cfg, 3), global_batch(task, cfg, 3), global_batch(task, cfg, 4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    cat = global_batch(task, small_cfg(concat_segments=2, seq_len=96), 0)
    assert cat.input_ids.shape == (4, 96) and cat.answer_positions.shape == (4, 8)


@pytest.mark.parametrize("options", [{}, {"state_reset_every": 16, "carry_state": True, "memory_reset_every": 3}])
def test_kill_and_resume_reproduces_the_loss_curve(tmp_path: Path, tiny_spec: dict[str, Any],
                                                   options: dict[str, Any]) -> None:
    full = train(small_cfg(**options), tiny_spec, tmp_path / "full", progress=False, log=lambda m: None)
    # "killed" after step 5: checkpoints at 2 and 4 exist, step 5 is lost
    train(small_cfg(**options), tiny_spec, tmp_path / "cut", progress=False, stop_after=5, log=lambda m: None)
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "step_0000004"
    assert not (tmp_path / "cut" / "model").exists()  # no final model for an unfinished run
    with pytest.raises(RunExistsError):
        train(small_cfg(**options), tiny_spec, tmp_path / "cut", progress=False, log=lambda m: None)
    resumed = train(small_cfg(**options), None, tmp_path / "cut", resume=True, progress=False, log=lambda m: None)
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "cut")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, abs=1e-6, rel=0)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    # the final weights agree too
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path: Path,
                                                                             tiny_spec: dict[str, Any]) -> None:
    full = train(small_cfg(), tiny_spec, tmp_path / "full", progress=False, log=lambda m: None)
    said: list[str] = []
    cut = train(small_cfg(eval_every=4, eval_samples=4), tiny_spec, tmp_path / "cut", progress=False,
                time_limit=0.0, log=said.append)
    # stopped after the first step (not at a checkpoint_every multiple), with a checkpoint there
    assert cut.step == 1 and ckpt.latest_checkpoint(tmp_path / "cut").name == "step_0000001"
    assert (tmp_path / "cut" / "model" / "model.safetensors").exists()  # usable by `hsa eval` at once
    assert any("time limit" in m for m in said)
    assert any(m.startswith("first step done") and "of set-up" in m for m in said)
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["stopped"] == "time_limit" and records[-1]["step"] == 1
    # the published weights of the stop step were evaluated there (step 1 is no eval_every multiple)
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [1] and cut.eval == evals[0]["eval"]
    # the schedule was not shortened: resuming continues the same 6-step run to the same curve
    resumed = train(small_cfg(), None, tmp_path / "cut", resume=True, progress=False, log=lambda m: None)
    assert resumed.step == 6
    assert train_losses(tmp_path / "cut") == pytest.approx(train_losses(tmp_path / "full"), abs=1e-6, rel=0)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)


def test_fit_to_time_ends_the_schedule_at_the_time_limit(tmp_path: Path, tiny_spec: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that ticks one second per reading (one reading per step): the measured rate is one step a
    second, and the run of at most 1,000 steps is cut to what fits 100 s; it then ends at that step, not
    at the time limit, with the count saved for a resume and the learning rate decayed to its floor."""
    import types

    from hsa_app.training import trainer as trainer_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    said: list[str] = []
    cfg = small_cfg(steps=1000, warmup=3, checkpoint_every=0, min_lr_ratio=0.1)
    res = train(cfg, tiny_spec, tmp_path / "run", progress=False, time_limit=100.0, fit_to_time=True,
                log=said.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fit = next(r for r in records if "fitted_steps" in r)
    assert fit["step"] == 3 and fit["steps_per_s"] == pytest.approx(1.0)
    assert fit["fitted_steps"] == 3 + int(0.95 * fit["time_left"] * 1.0) < 1000
    assert res.step == res.total_steps == fit["fitted_steps"]  # ended by its schedule ...
    assert not any("stopped" in r for r in records)  # ... not by the time limit
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["config"]
    assert saved["steps"] == fit["fitted_steps"]
    last_lr = [r["lr"] for r in records if "lr" in r][-1]
    assert last_lr == pytest.approx(lr_at(res.step - 1, TrainConfig(**{**cfg.to_dict(), "steps": res.step})))
    assert last_lr < 0.11 * cfg.lr
    assert any("the schedule now ends at step" in m for m in said)
    with pytest.raises(ValueError, match="fit_to_time needs a time_limit"):
        train(small_cfg(), tiny_spec, tmp_path / "other", progress=False, fit_to_time=True, log=said.append)


def test_crash_while_checkpointing_keeps_the_previous_one(tmp_path: Path, tiny_spec: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_commit = ckpt.commit

    def crashing_commit(run: Path, tmp: Path, step: int, keep: int) -> Path:
        if step == 4:
            raise KeyboardInterrupt("killed while writing step 4")
        return real_commit(run, tmp, step, keep)

    monkeypatch.setattr(ckpt, "commit", crashing_commit)
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(), tiny_spec, tmp_path / "run", progress=False, log=lambda m: None)
    cks = tmp_path / "run" / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step_0000002"
    assert any(p.name.startswith(".tmp-step_0000004") for p in cks.iterdir())  # the half-written one
    assert not (cks / "step_0000004").exists()
    monkeypatch.setattr(ckpt, "commit", real_commit)
    train(small_cfg(), None, tmp_path / "run", resume=True, progress=False, log=lambda m: None)
    train(small_cfg(), tiny_spec, tmp_path / "ref", progress=False, log=lambda m: None)
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(tmp_path / "ref"), abs=1e-6)
    names = sorted(p.name for p in cks.iterdir())
    assert names == ["latest", "step_0000004", "step_0000006"]  # keep=2, stale temp removed
    for d in ("step_0000004", "step_0000006"):
        assert (cks / d / ckpt.COMPLETE).is_file() and (cks / d / "model" / "model.safetensors").is_file()


def test_state_reset_segments_match_a_manual_loop(tiny_spec: dict[str, Any]) -> None:
    from hsa_core.model import HSALanguageModel

    model = HSALanguageModel.from_spec(tiny_spec)
    ids = torch.randint(0, 96, (2, 40))
    seg = SegmentedForward(model, state_reset_every=16)
    logits, _ = seg(ids)
    # manual: memory and position persist, backbone states restart at 16 and 32
    cache = model.init_cache(2)
    parts = []
    for s in (0, 16, 32):
        out = model(ids[:, s:s + 16], cache, return_cache=True)
        parts.append(out.logits)
        cache = out.cache
        cache.mixer_states = model.init_cache(2).mixer_states
    assert torch.allclose(logits, torch.cat(parts, 1), atol=1e-6)
    # without reset it is the plain forward; with a reset the outputs after 16 differ
    full = model(ids).logits
    assert torch.allclose(SegmentedForward(model)(ids)[0], full, atol=1e-6)
    assert torch.allclose(logits[:, :16], full[:, :16], atol=1e-5)
    assert not torch.allclose(logits[:, 16:], full[:, 16:], atol=1e-4)
    # the memory persists across resets: HSA still sees chunks from before position 16
    assert cache.memories["mid"].num_chunks == 5


def test_state_reset_lets_nothing_through_but_the_memory(tiny_spec: dict[str, Any]) -> None:
    """After a reset boundary the backbone has forgotten everything before it (convolution and SSM
    state): with the backbone alone, changing the tokens before the boundary changes no logit after
    it; with the chunk memory, the earlier tokens still reach later positions (through HSA only)."""
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    backbone_only = load_spec({
        "version": 1, "name": "tiny-mamba2", "model": {"vocab_size": 96, "d_model": 32, "tie_embeddings": True},
        "defaults": {"mamba2": {"d_state": 8, "d_conv": 4, "expand": 2, "headdim": 16, "chunk_size": 16}},
        "symbols": {"M": "mamba2"}, "layers": "M M M"})
    ids = torch.randint(0, 96, (2, 40))
    other = ids.clone()
    other[:, :16] = (ids[:, :16] + 1) % 96
    for spec, memory in ((backbone_only, False), (tiny_spec, True)):
        model = HSALanguageModel.from_spec(spec)
        seg = SegmentedForward(model, state_reset_every=16)
        with torch.no_grad():
            plain = model(ids).logits[:, 16:], model(other).logits[:, 16:]
            after_reset = seg(ids)[0][:, 16:], seg(other)[0][:, 16:]
        assert not torch.allclose(*plain, atol=1e-4)  # without the reset the earlier tokens matter
        assert torch.allclose(*after_reset, atol=1e-6) is not memory


@pytest.mark.parametrize(("loss_on", "by_position"), [
    pytest.param("answer", True, id="answer-rows-by-position"),
    pytest.param("answer", False, id="answer-mask-over-every-row"),
    pytest.param("all", False, id="every-target"),
])
def test_fused_loss_rows_match_plain_cross_entropy(tiny_spec: dict[str, Any], loss_on: str, by_position: bool) -> None:
    """The fused loss picks its rows without a boolean mask (no host sync on CUDA): the answer rows by
    position, or every row with the masked-out targets ignored. Same sum and gradients as cross-entropy
    over the full logits at the mask."""
    from hsa_core.model import HSALanguageModel

    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(tiny_spec)
    cfg = small_cfg(loss_on=loss_on)
    batch = global_batch(task_for_spec(cfg, tiny_spec), cfg, 0)
    mask = batch.loss_mask(loss_on)
    assert 0 < int(mask.sum()) < mask.numel()  # a mask that leaves rows out
    seg = SegmentedForward(model)
    loss_sum, answer_logits, _ = seg(batch.input_ids, targets=batch.targets, loss_mask=mask,
                                     answer_positions=batch.answer_positions, mask_is_answers=by_position)
    grads = torch.autograd.grad(loss_sum, [model.lm_head.weight, model.embedding.weight])
    logits = model(batch.input_ids).logits
    ref = torch.nn.functional.cross_entropy(logits[mask], batch.targets[mask], reduction="sum")
    ref_grads = torch.autograd.grad(ref, [model.lm_head.weight, model.embedding.weight])
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert answer_logits is not None
    torch.testing.assert_close(answer_logits, logits.gather(1, batch.answer_positions[..., None].expand(
        -1, -1, logits.shape[-1])), rtol=1e-5, atol=1e-5)


def test_carried_state_changes_the_start(tiny_spec: dict[str, Any]) -> None:
    from hsa_core.model import HSALanguageModel

    model = HSALanguageModel.from_spec(tiny_spec)
    ids = torch.randint(0, 96, (2, 24))
    seg = SegmentedForward(model)
    a, states = seg(ids, return_states=True)
    b, _ = seg(ids, init_states=states)
    zero, _ = seg(ids, init_states=model.init_cache(2).mixer_states)
    assert torch.allclose(a, zero, atol=1e-6)
    assert not torch.allclose(a, b, atol=1e-4)


def test_metrics_log_and_train_config(tmp_path: Path, tiny_spec: dict[str, Any]) -> None:
    res = train(small_cfg(steps=4, eval_every=2, eval_samples=4, loss_on="all"), tiny_spec, tmp_path / "r",
                progress=False, log=lambda m: None)
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "acc"} <= set(steps[0])
    evals = [r for r in recs if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and "acc@48" in evals[0]["eval"]
    assert res.eval is not None
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert saved["config"]["loss_on"] == "all" and saved["task_options"]["min_gap"] == 16
    from hsa_core.model import HSALanguageModel

    HSALanguageModel.from_pretrained(tmp_path / "r" / "model")  # loadable


def test_bad_settings_fail_clearly(tmp_path: Path, tiny_spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="loss_on"):
        TrainConfig(loss_on="everything")
    with pytest.raises(ValueError, match="shorter than task"):
        train(small_cfg(seq_len=20), tiny_spec, tmp_path / "x", progress=False, log=lambda m: None)


def test_freeze_keeps_the_matching_parameters_and_trains_the_rest(tmp_path: Path, tiny_spec: dict[str, Any]) -> None:
    """``freeze``: the matching parameters end exactly as they started (the tied embedding included),
    every other one moves; the setting is saved, and a resume applies it again."""
    from hsa_core.io import load_model
    from hsa_core.model import HSALanguageModel

    torch.manual_seed(0)
    start = HSALanguageModel.from_spec(tiny_spec)
    start.save_pretrained(tmp_path / "start")
    before = dict(start.named_parameters())
    patterns = [r"^embedding\.", r"^memories\.\w+\.encoder\."]
    cfg = small_cfg(steps=4, init_from=str(tmp_path / "start"), freeze=patterns)
    train(cfg, tiny_spec, tmp_path / "r", progress=False, log=lambda m: None, stop_after=2)
    train(cfg, None, tmp_path / "r", resume=True, progress=False, log=lambda m: None)
    after = dict(load_model(HSALanguageModel, tmp_path / "r" / "model").named_parameters())
    frozen = [n for n in before if n.startswith("embedding.") or ".encoder." in n]
    assert frozen and len(frozen) < len(before)
    changed = {n for n, p in before.items() if not torch.equal(p, after[n])}
    assert changed == set(before) - set(frozen)
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert saved["config"]["freeze"] == patterns


def test_freeze_names_a_pattern_that_matches_nothing(tmp_path: Path, tiny_spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"freeze: '\^embeddings' matches no parameter of the model \(its parameters: "
                                         r"embedding\.weight"):
        train(small_cfg(freeze=["^embeddings"]), tiny_spec, tmp_path / "a", progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="freeze every parameter: nothing left to train"):
        train(small_cfg(freeze=["."]), tiny_spec, tmp_path / "b", progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match=r"freeze: '\(' is not a regular expression"):
        small_cfg(freeze=["("])


def test_cli_freeze_with_a_pattern_that_matches_nothing_exits_2(tmp_path: Path) -> None:
    from hsa_cli.app import app
    from typer.testing import CliRunner

    tiny = Path(__file__).with_name("tiny.yaml")
    r = CliRunner().invoke(app, ["train", str(tiny), "--out", str(tmp_path / "r"), "--seq-len", "48", "--steps", "1",
                                 "-t", "num_symbols=16", "--no-progress", "--freeze", "^encoder"],
                           env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "freeze: '^encoder' matches no parameter" in r.stderr
