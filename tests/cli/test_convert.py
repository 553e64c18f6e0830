"""``hsa convert``: the authors' checkpoints <-> toolkit model directories, checked; exit codes 1, 2, 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_cli.app import app
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hsa_core.convert import config_from_spec, layout_from_config, to_published_state
from hsa_core.layout import load_spec, resolve
from hsa_core.model import HSALanguageModel
from hsa_core.presets import path as preset_path

# A small RAMba in the authors' config keys (2 + 2 x (HSA + 1) Mamba2 blocks, S=16, top-2).
CONFIG: dict[str, Any] = {
    "hidden_size": 32, "expand": 2, "head_dim": 16, "num_heads": 4, "state_size": 8, "conv_kernel": 4,
    "vocab_size": 50, "tie_word_embeddings": True, "layer_norm_epsilon": 1e-5, "num_lower_layers": 2,
    "num_upper_layers": 2, "num_upper_groups": 1, "num_mamba_per_gca": 1, "chunk_size": 16, "chunk_topk": 2,
    "retrieval_dim": 32, "encoder_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_kv_heads": 1, "mamba_chunk_size": 32, "segment_size": 4096,
}


def _their_checkpoint(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(checkpoint directory with model.safetensors + config.json, the file, its tensors)."""
    spec = resolve(layout_from_config(CONFIG))
    model = HSALanguageModel.from_spec(spec)
    state = {k: v.detach().clone() for k, v in to_published_state(model.state_dict(), spec).items()}
    folder = tmp_path / "theirs"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder, folder / "model.safetensors", state


def _run(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["convert", *args], env={"COLUMNS": "200"})


def test_import_and_export_round_trip(runner: CliRunner, tmp_path: Path) -> None:
    folder, _, state = _their_checkpoint(tmp_path)
    result = _run(runner, str(folder), str(tmp_path / "toolkit"))  # config.json found in the folder
    assert result.exit_code == 0, result.output
    assert "published -> toolkit" in result.stdout and "max |logit difference|" in result.stdout
    rel = float(result.stdout.split("relative ")[1].split(",")[0])
    assert rel < 1e-9  # float64 on both sides
    assert (tmp_path / "toolkit" / "config.yaml").is_file()

    result = _run(runner, str(tmp_path / "toolkit"), str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    assert "toolkit -> published" in result.stdout
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config == config_from_spec(resolve(layout_from_config(CONFIG)))


def test_import_with_a_preset_layout(runner: CliRunner, tmp_path: Path) -> None:
    """ramba-370m at reduced width (same published settings) describes a checkpoint of that shape."""
    sets = ["model.d_model=64", "model.vocab_size=50", "layers=M*1 | (H M*1)*3", "memories.mid.after_layer=1",
            "memories.mid.head_dim=4", "retrieval.mid_sel.retrieval_dim=64", "defaults.mamba2.headdim=32",
            "defaults.mamba2.d_state=8"]
    spec = load_spec(preset_path("ramba-370m"), overrides=sets)
    model = HSALanguageModel.from_spec(spec)
    save_file({k: v.detach().clone() for k, v in to_published_state(model.state_dict(), spec).items()},
              str(tmp_path / "ckpt.safetensors"))
    args = [str(tmp_path / "ckpt.safetensors"), str(tmp_path / "out"), "--layout", "ramba-370m",
            "--check-tokens", "80"]
    for s in sets:
        args += ["--set", s]
    result = _run(runner, *args)
    assert result.exit_code == 0, result.output
    assert "80 tokens" in result.stdout
    loaded = HSALanguageModel.from_pretrained(tmp_path / "out")
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.pop("backbone.layers.2.proj_k.weight"), "backbone.layers.2.proj_k.weight: missing"),
    (lambda s: s.__setitem__("backbone.layers.9.norm.weight", torch.ones(32)),
     "backbone.layers.9.norm.weight: unexpected"),
    (lambda s: s.__setitem__("backbone.layers.3.ln.weight", torch.ones(16, 32)),
     "backbone.layers.3.ln.weight: shape [16, 32], expected [32, 32]"),
])
def test_mismatched_checkpoint_is_one_line_exit_1(runner: CliRunner, tmp_path: Path, edit: Any, message: str) -> None:
    folder, file, state = _their_checkpoint(tmp_path)
    edit(state)
    save_file(state, str(file))
    result = _run(runner, str(folder), str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_torch_state_dict_is_read_with_weights_only(runner: CliRunner, tmp_path: Path) -> None:
    folder, _, state = _their_checkpoint(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    result = _run(runner, str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"),
                  "--config", str(folder / "config.json"), "--no-check")
    assert result.exit_code == 0, result.output
    assert "max |logit" not in result.stdout


def test_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    _, file, _ = _their_checkpoint(tmp_path)
    result = _run(runner, str(file), str(tmp_path / "out"))  # no layout, no config
    assert result.exit_code == 2 and "--layout" in result.output
    (tmp_path / "exists").mkdir()
    result = _run(runner, str(file), str(tmp_path / "exists"), "--layout", "ramba-370m")
    assert result.exit_code == 2 and "--force" in result.output


def test_unsupported_layout_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    spec = resolve(layout_from_config(CONFIG))
    spec["memories"]["mid"]["chunk_norm"] = True  # not something their code builds
    HSALanguageModel.from_spec(spec).save_pretrained(tmp_path / "toolkit")
    result = _run(runner, str(tmp_path / "toolkit"), str(tmp_path / "back"))
    assert result.exit_code == 1
    assert "memories.mid.chunk_norm: true; their encoder has no norm before it" in result.stderr
    assert not (tmp_path / "back").exists()


def test_failed_check_is_exit_4_and_writes_nothing(runner: CliRunner, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import hsa_core.convert as convert

    real = convert.reference_forward

    def off_by_a_bit(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        out.logits = out.logits + 1e-2
        return out

    monkeypatch.setattr(convert, "reference_forward", off_by_a_bit)
    folder, _, _ = _their_checkpoint(tmp_path)
    result = _run(runner, str(folder), str(tmp_path / "out"))
    assert result.exit_code == 4, result.output
    assert "check failed" in result.stderr and "nothing written" in result.stderr
    assert not (tmp_path / "out").exists()
