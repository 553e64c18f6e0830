"""The real-text commands end to end on a corpus the test writes: ``hsa data prepare`` -> ``hsa train
--data`` (20 steps) -> ``hsa eval ppl`` -> ``hsa eval passkey --filler text:`` -> ``hsa generate``; and
bad data as one ``error:`` line with exit code 1 or 2, never a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hsa_cli.app import app
from typer.testing import CliRunner

TINY = Path(__file__).parents[1] / "app" / "training" / "tiny.yaml"


def _corpus(root: Path, docs: int = 16) -> Path:
    rng = random.Random(1)
    words = ["the", "model", "reads", "chunks", "of", "the", "past", "and", "the", "state", "carries", "the",
             "rest;", "café", "東京"]
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(docs):
        n = 2000 if i < 8 else rng.randint(50, 400)  # a few long documents for the perplexity curve
        (corpus / f"d{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(n)) + "\n")
    return corpus


def _one_error_line(r, code: int, match: str) -> None:
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    lines = [line for line in r.stderr.splitlines() if line.strip()]  # (a progress bar may be on stdout)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    assert match in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_prepare_train_eval_generate(tmp_path: Path) -> None:
    runner = CliRunner()
    corpus, data, run = _corpus(tmp_path), tmp_path / "data", tmp_path / "run"
    r = runner.invoke(app, ["data", "prepare", str(corpus), "--out", str(data), "--tokenizer", "bytes",
                            "--val-fraction", "0.25", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "validation" in r.output and "MB/s per core" in r.output
    r = runner.invoke(app, ["data", "info", str(data)])
    assert r.exit_code == 0 and "ok: sizes and SHA-256 match" in r.output, r.output
    r = runner.invoke(app, ["train", str(TINY), "--data", str(data), "--out", str(run), "--seq-len", "64",
                            "--steps", "20", "--batch-size", "4", "--warmup", "5", "--lr", "3e-3",
                            "--eval-every", "10", "--eval-samples", "4", "--checkpoint-every", "10", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "eval: val_loss" in r.output
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in recs if "loss" in x]
    assert len(losses) == 20 and losses[-1] < losses[0]  # it learns something (bytes: loss from ~5.6)
    assert json.loads((run / "model" / "config.json").read_text())["model"]["vocab_size"] == 320  # 257 -> 64s

    r = runner.invoke(app, ["eval", "ppl", str(run), "--data", str(data), "--lengths", "256,1k,2k", "--docs", "2",
                            "--segment-len", "512", "--compare", str(run / "checkpoints" / "step_0000010" / "model")])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "eval_ppl.json").read_text())
    assert (run / "eval_ppl.png").stat().st_size > 1000
    assert result["evaluated_length"] == 2048 and len(result["documents"]) == 2 and len(result["models"]) == 2
    final, early = result["models"]
    assert [b["end"] for b in final["buckets"]] == [256, 1024, 2048]
    assert sum(b["tokens"] for b in final["buckets"]) == 2 * 2048 == final["overall"]["tokens"]
    assert final["overall"]["ppl"] < early["overall"]["ppl"] < 320  # later weights are better, both beat uniform

    r = runner.invoke(app, ["eval", "passkey", str(run), "--filler", f"text:{data}", "--lengths", "320",
                            "--depths", "0.5", "--samples", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval_passkey_text.json").read_text())["task_options"]["filler"] == f"text:{data}"

    r = runner.invoke(app, ["generate", str(run), "--prompt", "the model", "--max-new-tokens", "12", "--seed", "3"])
    assert r.exit_code == 0, r.output
    again = runner.invoke(app, ["generate", str(run), "--prompt", "the model", "--max-new-tokens", "12", "--seed", "3"])
    assert again.stdout == r.stdout and "generated" in r.stderr  # same seed, same text (stats on stderr)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the state " * 300)  # 3,000 bytes: several prefill segments of 1,024
    r = runner.invoke(app, ["generate", str(run), "--prompt-file", str(prompt), "--max-new-tokens", "4",
                            "--temperature", "0", "--segment-len", "1024"])
    assert r.exit_code == 0 and "prompt: 3,001 tokens" in r.output, r.output
    assert "chunk memory on the device" in r.stderr and "decode" in r.stderr

    # --offload: the same text, and the footprint says where the chunk K/V were
    stats = tmp_path / "stats.json"
    off = runner.invoke(app, ["generate", str(run), "--prompt-file", str(prompt), "--max-new-tokens", "4",
                              "--temperature", "0", "--segment-len", "1024", "--offload", "--stats-json", str(stats)])
    assert off.exit_code == 0 and off.stdout == r.stdout, off.output
    assert "chunk K/V in host memory" in off.stderr
    figures = json.loads(stats.read_text())
    assert figures["offload"] and figures["host_bytes"] > 0 and figures["prefill_tokens"] == 3001
    assert figures["decode_tokens"] == 3 and figures["decode_tokens_per_s"] > 0
    _generate_many_equals_one_at_a_time(runner, run, tmp_path)
    r = runner.invoke(app, ["eval", "passkey", str(run), "--filler", f"text:{data}", "--lengths", "320",
                            "--depths", "0.5", "--samples", "2", "--offload", "--out", str(tmp_path / "off")])
    assert r.exit_code == 0 and "chunk K/V in host memory" in r.output, r.output
    meta = json.loads((tmp_path / "off" / "eval_passkey_text.json").read_text())["meta"]
    assert meta["offload"] and meta["footprint"]["320"]["host_bytes"] > 0


def _generate_many_equals_one_at_a_time(runner: CliRunner, run: Path, tmp_path: Path) -> None:
    """``--prompts``: prompts of different lengths in batches of 2, greedy: each result is the text that
    ``--prompt`` alone streams; ids, line numbers and token counts are carried; --force replaces --out."""
    texts = ["the model", "the state carries the rest; the model reads chunks of the past", "café 東京", "of"]
    prompts = tmp_path / "many.jsonl"
    prompts.write_text(json.dumps(texts[0]) + "\n" + json.dumps({"id": "b", "prompt": texts[1]}) + "\n\n"
                       + "".join(json.dumps(t) + "\n" for t in texts[2:]))
    results = tmp_path / "many_out.jsonl"
    args = ["generate", str(run), "--prompts", str(prompts), "--max-new-tokens", "6", "--temperature", "0",
            "--batch-size", "2", "--segment-len", "16", "--out", str(results)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "generated" in r.stderr and "for 4 prompts" in r.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [x["index"] for x in rows] == [0, 1, 2, 3] and [x["line"] for x in rows] == [1, 2, 4, 5]
    assert rows[1]["id"] == "b" and "id" not in rows[0]
    assert rows[2]["prompt_tokens"] == 1 + len(texts[2].encode())  # bytes tokenizer: UTF-8 bytes, EOS first
    for text, row in zip(texts, rows, strict=True):
        alone = runner.invoke(app, ["generate", str(run), "--prompt", text, "--max-new-tokens", "6", "--temperature",
                                    "0", "--segment-len", "16"])
        assert alone.exit_code == 0, alone.output
        assert alone.stdout == row["text"] + "\n", (text, row)
        assert 1 <= row["generated_tokens"] <= 6
    to_stdout = runner.invoke(app, args[:-2])
    assert to_stdout.exit_code == 0 and [json.loads(x) for x in to_stdout.stdout.splitlines()] == rows
    results.write_text("old\n")
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert [json.loads(line) for line in results.read_text().splitlines()] == rows


def test_bad_data_gives_one_line(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    runner = CliRunner()
    corpus, data, run = _corpus(tmp_path, docs=6), tmp_path / "data", tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    _one_error_line(runner.invoke(app, ["data", "prepare", str(empty), "--out", str(tmp_path / "o1")]), 1,
                    "no text found")
    _one_error_line(runner.invoke(app, ["data", "prepare", str(tmp_path / "missing"), "--out",
                                        str(tmp_path / "o2")]), 2, "missing: no such file or directory")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_bytes(b"\xff\xfe not utf-8")
    _one_error_line(runner.invoke(app, ["data", "prepare", str(bad), "--out", str(tmp_path / "o3")]), 1,
                    "x.txt: not valid UTF-8 (byte 0")
    _one_error_line(runner.invoke(app, ["data", "prepare", str(corpus), "--out", str(tmp_path / "o4"),
                                        "--tokenizer", "bpe:70000", "--dtype", "uint16", "--no-progress"]), 1,
                    "--dtype uint16 holds ids below 65,536")

    assert runner.invoke(app, ["data", "prepare", str(corpus), "--out", str(data), "--no-progress"]).exit_code == 0
    r = runner.invoke(app, ["train", str(TINY), "--data", str(data), "--out", str(run), "--seq-len", "32",
                            "--steps", "2", "--batch-size", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    _one_error_line(runner.invoke(app, ["train", str(TINY), "--data", str(data), "--out", str(tmp_path / "r2"),
                                        "--set", "model.vocab_size=100", "--steps", "1", "--no-progress"]), 1,
                    "model.vocab_size 100 is smaller than the vocabulary of the data's tokenizer (257")

    other = tmp_path / "bpe"  # the same text with another tokenizer than the run's
    assert runner.invoke(app, ["data", "prepare", str(corpus), "--out", str(other), "--tokenizer", "bpe:300",
                               "--no-progress", "--val-fraction", "0.5"]).exit_code == 0
    _one_error_line(runner.invoke(app, ["eval", "ppl", str(run), "--data", str(other), "--lengths", "64"]), 1,
                    "was prepared with another tokenizer")
    _one_error_line(runner.invoke(app, ["eval", "passkey", str(run), "--filler", f"text:{other}", "--lengths",
                                        "400"]), 1, "was prepared with another tokenizer")
    _one_error_line(runner.invoke(app, ["train", str(TINY), "--data", str(other), "--out", str(tmp_path / "r3"),
                                        "--init-from", str(run), "--steps", "1", "--seq-len", "32",
                                        "--no-progress"]), 1, "was trained with another tokenizer")

    shard = data / "train" / "tokens_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-6])
    _one_error_line(runner.invoke(app, ["data", "info", str(data)]), 1, "(truncated or corrupted shard)")
    _one_error_line(runner.invoke(app, ["train", str(TINY), "--data", str(data), "--out", str(tmp_path / "r4"),
                                        "--steps", "1", "--no-progress"]), 1, "(truncated or corrupted shard)")
    _one_error_line(runner.invoke(app, ["eval", "ppl", str(run), "--lengths", "64"]), 2, "needs --data DIR")
    _one_error_line(runner.invoke(app, ["generate", str(run)]), 2,
                    "give exactly one of --prompt, --prompt-file and --prompts")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"fine"\n{"id": 3, "prompt": "also fine"}\n{"prompt": "no closing brace"\n')
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(prompts)]), 1,
                    "prompts.jsonl:3: not JSON")
    prompts.write_text('"fine"\n\n{"text": "the wrong field"}\n')
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(prompts)]), 1,
                    "prompts.jsonl:3: expected a JSON string or an object with a string field 'prompt', got an "
                    "object with fields ['text']")
    prompts.write_text("\n  \n")
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(prompts)]), 1, "no prompts")
    prompts.write_bytes(b'"caf\xe9"\n')
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(prompts)]), 1,
                    "not valid UTF-8 (byte 4)")
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(tmp_path / "none.jsonl")]), 2,
                    "none.jsonl: no such file")
    prompts.write_text('"fine"\n')
    taken = tmp_path / "taken.jsonl"
    taken.write_text("keep me\n")
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompts", str(prompts), "--out", str(taken)]), 2,
                    "exists; pass --force to replace it")
    assert taken.read_text() == "keep me\n"
    _one_error_line(runner.invoke(app, ["generate", str(run), "--prompt", "x", "--out", str(taken)]), 2,
                    "--out and --force go with --prompts")
