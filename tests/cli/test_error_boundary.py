"""The error boundary of every command: one line, a documented exit code, never a traceback."""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hsa_cli import _common
from hsa_cli.app import app
from typer.testing import CliRunner

from hsa_core.errors import InvalidFileError, ResourceLimitError

TOY_PLUGIN = Path(__file__).with_name("toy_plugin.py")
README = Path(__file__).resolve().parents[2] / "README.md"
WIDE = {"COLUMNS": "300"}


def _one_error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_readme_exit_code_table_matches_the_code() -> None:
    table = README.read_text().split("Exit codes:", 1)[1].split("```", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    in_code = {v for k, v in vars(_common).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert documented == in_code


@pytest.mark.parametrize(("exc", "code", "text"), [
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), 5, "/x/y: Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), 5, "Is a directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/f"), 5, "No space left"),
    (json.JSONDecodeError("Expecting value", "{", 0), 6, "invalid JSON"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 6, "not UTF-8"),
    (InvalidFileError("model.safetensors is corrupt"), 6, "corrupt"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 7, "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), 7,
     "out of memory"),
    (MemoryError(), 7, "out of memory"),
    (ResourceLimitError("too large"), 7, "too large"),
    (AssertionError("Torch not compiled with CUDA enabled"), 3, "CUDA is not available"),
    (RuntimeError("Found no NVIDIA driver on your system"), 3, "CUDA is not available"),
    (ModuleNotFoundError("No module named 'foo'", name="foo"), 3, "pip install foo"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (TypeError("unsupported operand"), 70, "internal error"),
])
def test_classify_maps_library_and_os_errors(exc: BaseException, code: int, text: str) -> None:
    message, got = _common.classify(exc)
    assert got == code and text in message, (message, got)


def test_safetensors_error_is_an_invalid_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00" * 3)
    try:
        load_file(str(bad))
    except Exception as exc:  # SafetensorError
        message, code = _common.classify(exc)
    assert code == 6 and "safetensors" in message


def test_internal_errors_are_one_line_and_debuggable(monkeypatch: pytest.MonkeyPatch) -> None:
    @_common.guarded
    def boom() -> None:
        raise ZeroDivisionError("x" * 100_000)

    import typer

    with pytest.raises(typer.Exit) as info:
        boom()
    assert info.value.exit_code == 70
    monkeypatch.setenv("HSA_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        boom()


def test_version(runner: CliRunner) -> None:
    from importlib import metadata

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"hsa-toolkit {metadata.version('hsa-toolkit')}"


# -- spec files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x80", bytes(range(256)), b"a: [1, 2\n"])
@pytest.mark.parametrize("command", ["validate", "build", "train", "demo"])
def test_binary_or_broken_spec_files_are_exit_1(runner: CliRunner, tmp_path: Path, content: bytes,
                                                command: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    args = [command, str(spec)] + (["--out", str(tmp_path / "o")] if command == "train" else [])
    line = _one_error_line(runner.invoke(app, args, env=WIDE), 1)
    assert str(spec) in line


def test_alias_bomb_is_refused_quickly(runner: CliRunner, tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(levels) + "\nname: *a11\n")
    line = _one_error_line(runner.invoke(app, ["validate", str(spec)]), 1)
    assert "100,000 values" in line and len(line) < 400
    # the bomb as a --set value, and as the value of a key the checks echo
    bomb = "&a [[x, x, x, x, x, x, x, x, x], " + ", ".join(["*a"] * 9) + "]"
    for args in (["--set", "model.d_model=[*a, *a]"], ["--set", "model.d_model=" + "x" * 200_000],
                 ["--set", "model.d_model=" + "[" * 3000 + "]" * 3000], ["--set", f"model.d_model={bomb}"]):
        result = runner.invoke(app, ["validate", "ramba-cpu", *args])
        assert result.exit_code == 1 and len(result.stderr) < 1200, result.stderr[:300]


@pytest.mark.parametrize("layers", ["M*99999999", "(M*4000 M*4000)", "(M*99)*99999999999999999999999",
                                    "M*" + "9" * 5000, "(" * 5000 + "M" + ")" * 5000])
def test_huge_patterns_are_refused_before_expanding(runner: CliRunner, layers: str) -> None:
    result = runner.invoke(app, ["validate", "ramba-cpu", "--set", f"layers={layers}"])
    line = _one_error_line(result, 1)
    assert len(line) < 600


def test_override_ranges_are_checked_before_expanding(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", "ramba-cpu", "--set", "overrides.0-99999999999999={mlp: true}"])
    assert "out of range" in _one_error_line(result, 1)


def test_validate_runs_the_checks_of_build(runner: CliRunner) -> None:
    """ramba-cpu's mamba2 needs expand * d_model to be a multiple of headdim: only its constructor says so."""
    args = ["ramba-cpu", "--set", "model.d_model=100"]
    built = _one_error_line(runner.invoke(app, ["build", *args]), 1)
    validated = _one_error_line(runner.invoke(app, ["validate", *args]), 1)
    assert built == validated and "headdim" in built


def test_model_too_large_for_memory_is_refused_before_allocating(runner: CliRunner,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hsa_core import limits

    monkeypatch.setattr(limits, "_cpu_available", lambda: 64 << 20)  # 64 MiB free
    line = _one_error_line(runner.invoke(app, ["build", "ramba-370m", "--device", "cpu"]), 7)
    assert "too large for cpu" in line and re.search(r"its 38\d\.\d\dM parameters need 1\.\d\d GiB", line), line
    # the huge count prints sanely, and on meta it still builds
    big = runner.invoke(app, ["build", "ramba-cpu", "--set", "model.vocab_size=100000000000", "--json"])
    assert big.exit_code == 0, big.output
    from hsa_core.summary import format_count

    assert format_count(605_000_177_850_000_000) == "6.05e+17" and format_count(2_500_000_000_000) == "2.50T"


# -- unwritable --out ---------------------------------------------------------------------------------
@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A path under a regular file: no one (not even root) can create a folder there."""
    wall = tmp_path / "a-file"
    wall.write_text("x")
    return wall / "out"


def test_unwritable_out_fails_before_building(runner: CliRunner, blocked: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hsa_cli import build as build_cmd

    built: list[Any] = []
    monkeypatch.setattr(build_cmd, "build_model", lambda *a, **k: built.append(1))
    line = _one_error_line(runner.invoke(app, ["build", "ramba-cpu", "--out", str(blocked)]), 5)
    assert "--out is not writable" in line and not built


def test_unwritable_out_fails_before_training(runner: CliRunner, blocked: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import hsa_app.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))
    line = _one_error_line(runner.invoke(app, ["train", "ramba-cpu", "--out", str(blocked), "--steps", "1"]), 5)
    assert "--out is not writable" in line


def test_fit_to_time_without_a_time_limit_is_a_usage_error(runner: CliRunner, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import hsa_app.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))
    line = _one_error_line(runner.invoke(app, ["train", "ramba-cpu", "--out", str(tmp_path / "run"), "--steps", "1",
                                               "--fit-to-time"]), 2)
    assert "--fit-to-time needs --time-limit" in line


def test_unwritable_eval_out_fails_before_evaluating(runner: CliRunner, blocked: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hsa_app.evaluation as evaluation

    monkeypatch.setattr(evaluation, "run_eval", lambda *a, **k: pytest.fail("evaluated"))
    line = _one_error_line(runner.invoke(app, ["eval", "passkey", str(tmp_path), "--out", str(blocked)]), 5)
    assert "--out is not writable" in line


# -- devices and backends -----------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_device_cuda_without_a_gpu_is_exit_3(runner: CliRunner, command: str, tmp_path: Path,
                                              write_layout: Callable[..., Path]) -> None:
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    model_dir = tmp_path / "m"
    HSALanguageModel.from_spec(load_spec("examples/ramba-cpu.yaml")).save_pretrained(model_dir)
    args = (["train", "ramba-cpu", "--out", str(tmp_path / "r"), "--device", "cuda"] if command == "train" else
            ["eval", "passkey", str(model_dir), "--device", "cuda"])
    assert "CUDA is not available" in _one_error_line(runner.invoke(app, args), 3)


def test_unknown_hsa_backend_is_a_usage_error(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSA_BACKEND", "cuda-magic")
    line = _one_error_line(runner.invoke(app, ["demo"]), 2)
    assert "HSA_BACKEND='cuda-magic'" in line and "auto, torch, triton" in line


def test_info_does_not_claim_triton_runs_on_cpu(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSA_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    cpu = {op: per["cpu"] for op, per in json.loads(result.stdout)["backends"].items()}
    assert all(v.startswith("unavailable") and "TRITON_INTERPRET" in v for v in cpu.values()), cpu
    line = _one_error_line(runner.invoke(app, ["demo"]), 2)
    assert "HSA_BACKEND=triton" in line
    monkeypatch.setenv("HSA_BACKEND", "nonsense")
    info = runner.invoke(app, ["info", "--json"])
    assert info.exit_code == 0 and "unavailable" in info.stdout


# -- corrupt model directories in hsa eval --------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    spec = load_spec("examples/ramba-cpu.yaml", overrides=["model.vocab_size=64"])
    return HSALanguageModel.from_spec(spec).save_pretrained(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "json", "binary_json", "shapes", "missing"])
def test_eval_on_a_corrupt_model_directory_is_exit_6(runner: CliRunner, model_dir: Path, damage: str) -> None:
    weights, config = model_dir / "model.safetensors", model_dir / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"\x07" * 5000)
    elif damage == "json":
        config.write_text("{oops")
        (model_dir / "config.yaml").unlink()
    elif damage == "binary_json":
        config.write_bytes(b"\xff\xfe\x80")
        (model_dir / "config.yaml").unlink()
    elif damage == "shapes":
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        key = next(k for k in state if state[k].ndim == 2)
        state[key] = state[key][:, :-1].contiguous()
        save_file(state, str(weights))
    else:
        weights.unlink()
    result = runner.invoke(app, ["eval", "passkey", str(model_dir), "--lengths", "64", "--samples", "1"])
    assert str(model_dir) in _one_error_line(result, 6)


def test_the_outermost_toolkit_error_decides_and_from_none_hides_the_rest() -> None:
    from hsa_core.errors import MissingDependencyError, SpecError

    try:
        try:
            raise SpecError("x", "inner")
        except SpecError:
            raise InvalidFileError("outer") from None
    except InvalidFileError as exc:
        assert _common.classify(exc) == ("outer", 6)
    try:
        try:
            raise MissingDependencyError("backbone 'g'", "fla", "fla")
        except MissingDependencyError as inner:
            raise SpecError("", "building the model failed") from inner
    except SpecError as exc:
        message, code = _common.classify(exc)
        assert code == 3 and "hsa-toolkit[fla]" in message
