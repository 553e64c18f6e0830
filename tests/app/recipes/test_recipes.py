"""Training recipes: ``ramba-paper`` holds the paper's settings; flags on the command line win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hsa_app.recipes import RecipeError, apply_recipe, load_recipe, names
from hsa_app.training import TrainConfig
from hsa_cli.app import app
from typer.testing import CliRunner

TINY = Path(__file__).resolve().parents[1] / "training" / "tiny.yaml"


def test_ramba_paper_holds_the_published_settings() -> None:
    assert "ramba-paper" in names()
    r = load_recipe("ramba-paper")
    assert r == {"lr": 2e-3, "min_lr_ratio": 0.2, "warmup_fraction": 0.02, "weight_decay": 0.001, "beta1": 0.9,
                 "beta2": 0.95, "grad_clip": 1.0, "state_reset_every": 4096, "carry_state": True,
                 "memory_reset_every": 64, "concat_segments": 2, "dtype": "bf16"}
    cfg = TrainConfig(**apply_recipe(r, TrainConfig().to_dict() | {"steps": 1000}, explicit=set()))
    assert (cfg.lr, cfg.warmup, cfg.weight_decay, cfg.state_reset_every, cfg.carry_state) == (2e-3, 20, 0.001,
                                                                                            4096, True)


def test_explicit_values_win() -> None:
    values = TrainConfig().to_dict() | {"steps": 500, "lr": 5e-4, "warmup": 7}
    out = apply_recipe(load_recipe("ramba-paper"), values, explicit={"lr", "warmup"})
    assert (out["lr"], out["warmup"], out["min_lr_ratio"]) == (5e-4, 7, 0.2)


def test_bad_recipes_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no recipe named 'nope'"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1.0e-3, lr_peak: 2}\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: train\.lr_peak: unknown setting"):
        load_recipe(str(bad))


def test_hsa_train_with_the_recipe(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    args = ["train", str(TINY), "--out", str(tmp_path / "run"), "--task", "passkey", "--seq-len", "128",
            "--steps", "2", "--batch-size", "2", "--device", "cpu", "--recipe", "ramba-paper", "--lr", "1e-3",
            "--no-progress", "--checkpoint-every", "0"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "recipe ramba-paper:" in result.stdout
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["config"]
    assert saved["lr"] == 1e-3  # given on the command line
    assert (saved["min_lr_ratio"], saved["warmup"], saved["concat_segments"], saved["carry_state"],
            saved["memory_reset_every"], saved["state_reset_every"], saved["dtype"]) == (
        0.2, 1, 2, True, 64, 4096, "bf16")
    result = CliRunner().invoke(app, ["train", str(TINY), "--out", str(tmp_path / "run2"), "--recipe", "nope"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "no recipe named 'nope'" in result.output
