"""Checkpoints without pickle, falling back to an intact checkpoint, and explicit resume semantics."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hsa_app.runtime import checkpoint as ckpt
from hsa_app.training import TrainConfig, train, train_losses
from hsa_app.training.trainer import NoCheckpointError

from hsa_core.errors import HSAError, InvalidFileError

ROOT = Path(__file__).resolve().parents[3]
TINY = Path(__file__).with_name("tiny.yaml")


def small_cfg(**kw: Any) -> TrainConfig:
    base = dict(seq_len=48, batch_size=2, steps=4, lr=3e-3, warmup=1, checkpoint_every=2,
                task_options={"num_symbols": 16}, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 4-step run: checkpoints at steps 2 and 4, model/, metrics.jsonl, train_config.json."""
    from hsa_core.layout import load_spec

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run") / "run"
    train(small_cfg(carry_state=True), load_spec(TINY), run, progress=False, log=quiet)
    return run


class _Payload:
    """Unpickling this creates ``marker``: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _poison(path: Path, marker: Path) -> None:
    """Replace ``path`` with a torch.save file (a pickle) whose loading would create ``marker``."""
    path.unlink()
    torch.save({"state": _Payload(marker), "param_groups": []}, path)


# -- no pickle ----------------------------------------------------------------------------------------
def test_no_unsafe_load_anywhere_in_the_code() -> None:
    """No ``weights_only=False``, no ``pickle.load``, and every ``torch.load`` says ``weights_only=True``."""
    unsafe = "weights_only" + "=False"
    offenders, scanned = [], set()
    for folder in ("hsa_core", "app", "cli", "backbones", "kernels", "bench", "scripts", "plugins", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            scanned.add(folder)
            text = path.read_text()
            if unsafe in text.replace(" ", "") or re.search(r"\bpickle\.loads?\(", text):
                offenders.append(str(path))
            for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in call.group(1).replace(" ", ""):
                    offenders.append(f"{path}: {call.group(0)}")
    assert {"hsa_core", "app", "cli"} <= scanned  # the folders are where this test looks for them
    assert not offenders, offenders


def test_checkpoint_files_are_safetensors_and_json_only(finished_run: Path) -> None:
    for step in ckpt.complete_checkpoints(finished_run):
        names = sorted(p.name for p in step.iterdir())
        assert names == ["COMPLETE", "model", "optimizer.json", "optimizer.safetensors", "rank_00000.json",
                         "rank_00000.safetensors", "trainer.json"], names
        for f in step.rglob("*"):
            if f.is_file() and f.suffix not in (".json", ".safetensors", ".yaml", ""):
                raise AssertionError(f"unexpected file {f}")
        assert json.loads((step / "trainer.json").read_text())["format"] == ckpt.FORMAT
        # every file with the same mode (from the umask), weights included
        modes = {oct(f.stat().st_mode & 0o777) for f in step.rglob("*") if f.is_file()}
        assert len(modes) == 1, modes


def test_tree_round_trip_keeps_types_exactly(tmp_path: Path) -> None:
    import random

    tree = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "param_groups": [{"params": [0], "betas": (0.9, 0.95), "lr": float("inf"), "name": None}],
            "python": random.getstate(), "numpy": np.random.get_state(), "__odd": [1, "x", True]}
    ckpt.save_tree(tree, tmp_path, "t")
    back = ckpt.load_tree(tmp_path, "t")
    assert set(back) == set(tree)
    assert torch.equal(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.95) and back["param_groups"][0]["lr"] == float("inf")
    assert back["python"] == tree["python"]
    random.setstate(back["python"])  # usable as is
    np.random.set_state(back["numpy"])
    assert back["numpy"][1].dtype == np.uint32 and np.array_equal(back["numpy"][1], tree["numpy"][1])
    with pytest.raises(TypeError, match="no pickle"):
        ckpt.save_tree({"x": object()}, tmp_path, "bad")


def test_a_pickle_payload_in_any_file_of_a_run_or_model_dir_never_runs(finished_run: Path, tmp_path: Path) -> None:
    """Each file of a finished run (and legacy ``*.pt`` names beside them) replaced, one at a time, by a
    pickle whose loading would create a marker file; then resume, eval and from_pretrained read it."""
    from hsa_cli.app import app
    from typer.testing import CliRunner

    from hsa_core.model import HSALanguageModel

    files = sorted(p.relative_to(finished_run) for p in finished_run.rglob("*") if p.is_file())
    legacy = [c.relative_to(finished_run) / name for c in ckpt.complete_checkpoints(finished_run)
              for name in ("optimizer.pt", "rank_00000.pt")]
    assert len(files) > 15
    # the payload is live: unpickling it does create its marker
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.exists()
    marker = tmp_path / "PWNED"
    for i, rel in enumerate(files + legacy):
        run = tmp_path / f"r{i}"
        shutil.copytree(finished_run, run)
        target = run / rel
        if target.exists():
            _poison(target, marker)
        else:
            torch.save(_Payload(marker), target)
        # Each reader of the file (a model/ file is not read by resume, a checkpoint file not by eval).
        if rel.parts[0] != "model":
            with contextlib.suppress(HSAError, OSError, ValueError):
                train(small_cfg(carry_state=True), None, run, resume=True, progress=False, log=quiet)
        if rel.parts[0] == "checkpoints" and "model" in rel.parts:
            with contextlib.suppress(HSAError):
                HSALanguageModel.from_pretrained(run / Path(*rel.parts[:3]))
        if rel.parts[0] != "checkpoints":
            CliRunner().invoke(app, ["eval", "passkey", str(run), "--lengths", "48", "--depths", "0.5",
                                     "--samples", "1", "-t", "num_symbols=16"])
        assert not marker.exists(), f"loading {rel} ran code from the file"
        shutil.rmtree(run)


# -- fallback to an intact checkpoint -----------------------------------------------------------------
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path, finished_run: Path) -> None:
    from hsa_core.layout import load_spec

    run = tmp_path / "cut"
    train(small_cfg(carry_state=True, steps=6), load_spec(TINY), run, progress=False, log=quiet, stop_after=5)
    newest = ckpt.latest_checkpoint(run)
    assert newest is not None and newest.name == "step_0000004"
    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    said: list[str] = []
    res = train(small_cfg(carry_state=True, steps=6), None, run, resume=True, progress=False, log=said.append)
    assert any("step_0000004 is unusable" in m and "falling back to step_0000002" in m for m in said), said
    assert any("set aside" in m for m in said)
    assert res.start_step == 2 and res.step == 6
    ref = tmp_path / "ref"
    train(small_cfg(carry_state=True, steps=6), load_spec(TINY), ref, progress=False, log=quiet)
    assert train_losses(run) == pytest.approx(train_losses(ref), abs=1e-6, rel=0)
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step_0000006", "step_0000004"]


def test_no_intact_checkpoint_is_one_clear_error(tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for step in ckpt.complete_checkpoints(run):
        (step / "trainer.json").write_text("{not json")
    with pytest.raises(InvalidFileError, match=r"no intact checkpoint.*step_0000004.*not valid JSON"):
        train(small_cfg(), None, run, resume=True, progress=False, log=quiet)


# -- resume semantics ---------------------------------------------------------------------------------
def test_resume_without_a_checkpoint_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    from hsa_core.layout import load_spec

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(NoCheckpointError, match="no complete checkpoint"):
        train(small_cfg(), load_spec(TINY), run, resume=True, progress=False, log=quiet)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_resume_with_nothing_left_reports_the_runs_final_loss(tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = train(small_cfg(), None, run, resume=True, progress=False, log=quiet)
    assert res.step == res.start_step == 4 and res.total_steps == 4
    assert res.final_loss == pytest.approx(train_losses(finished_run)[-1])


def _cli_train(*args: str) -> Any:
    from hsa_cli.app import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["train", str(TINY), "--seq-len", "48", "--batch-size", "2", "--warmup", "1",
                                    "--checkpoint-every", "2", "-t", "num_symbols=16", "--no-progress",
                                    "--carry-state", "--lr", "0.003", *args], env={"COLUMNS": "300"})


def test_cli_resume_refuses_conflicting_flags_and_spec(tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # the same command line resumes (nothing left to do) and reports consistent numbers
    same = _cli_train("--out", str(run), "--steps", "4", "--resume")
    assert same.exit_code == 0, same.output
    assert "nothing to train" in same.stdout and "step 4 of 4" in same.stdout and "nan" not in same.stdout
    changed = _cli_train("--out", str(run), "--resume", "--seq-len", "64", "--lr", "0.01")
    assert changed.exit_code == 2, changed.output
    assert changed.stderr.count("\n") == 1 and "--seq-len 64 (checkpoint: 48)" in changed.stderr
    assert "--lr 0.01 (checkpoint: 0.003)" in changed.stderr
    spec_changed = _cli_train("--out", str(run), "--resume", "--set", "model.d_model=64")
    assert spec_changed.exit_code == 2 and "model.d_model" in spec_changed.stderr, spec_changed.output
    # extending the run is allowed (--steps), and says which steps it trained
    longer = _cli_train("--out", str(run), "--resume", "--steps", "5")
    assert longer.exit_code == 0, longer.output
    assert "trained steps 5-5 of 5" in longer.stdout


def test_cli_resume_without_checkpoint_exit_2(tmp_path: Path) -> None:
    result = _cli_train("--out", str(tmp_path / "fresh"), "--resume", "--steps", "2")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --resume:") and "no complete checkpoint" in result.stderr


def test_legacy_pickle_checkpoint_is_reported_not_loaded(tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for step in ckpt.complete_checkpoints(run):
        state = json.loads((step / "trainer.json").read_text())
        state.pop("format")
        (step / "trainer.json").write_text(json.dumps(state))
        (step / "optimizer.pt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InvalidFileError, match="format 1"):
        train(small_cfg(), None, run, resume=True, progress=False, log=quiet)


def test_a_metrics_line_cut_by_a_kill_does_not_block_resume(tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 0.')  # the kill came mid-write
    said: list[str] = []
    res = train(small_cfg(), None, run, resume=True, progress=False, log=said.append)
    assert res.step == 4 and any("left out 1 unreadable line" in m for m in said)
    assert train_losses(run) == train_losses(finished_run)
