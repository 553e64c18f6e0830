"""``hsa generate RUN --prompt TEXT | --prompt-file FILE``: continue a prompt with a trained language
model, streaming the decoded text to stdout (prompt statistics go to stderr)."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import typer

from ._common import EXIT_USAGE, check_writable, fail, guarded
from ._data import data_guarded


@guarded
@data_guarded
def generate(
    run: Path = typer.Argument(..., help="Run directory of `hsa train --data` (or a model directory)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt text."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", "-f", help="Read the prompt from this UTF-8 file "
                                            "(any length: it is prefilled segment by segment)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", min=0),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="0 = greedy."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Sample among the k most likely tokens."),
    top_p: float | None = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (the same seed gives the same text)."),
    segment_len: int = typer.Option(4096, "--segment-len", min=1, help="Prefill segment (bounds activations)."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="A tokenizer.json or 'bytes' (default: the "
                                         "run's RUN/tokenizer.json)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep going after the end-of-document token."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA), fp32 or bf16."),
    offload: bool | None = typer.Option(None, "--offload/--no-offload", help="Keep the chunk memory's K/V in "
                                        "host memory, copying in only the selected chunks (default: as the "
                                        "layout says)."),
    stats_json: Path | None = typer.Option(None, "--stats-json", help="Also write the footprint and speed "
                                           "(GPU peak, host memory, prefill and decode tokens/s) to this file."),
) -> None:
    """Generate text from a trained model; the prompt starts a document (an EOS is put before it)."""
    import torch
    from hsa_app.data.errors import DataError
    from hsa_app.data.tokenizer import ByteTokenizer, load_tokenizer
    from hsa_app.runtime.checkpoint import model_dir_of
    from hsa_app.training.text_data import find_run_tokenizer
    from rich.console import Console

    from hsa_core.devices import resolve_device
    from hsa_core.generation import RunStats, TextStream, stream_generate
    from hsa_core.model import load_pretrained

    from ._progress import PromptDisplay

    if (prompt is None) == (prompt_file is None):
        fail("give exactly one of --prompt and --prompt-file", EXIT_USAGE)
    if prompt_file is not None:
        if not prompt_file.is_file():
            fail(f"--prompt-file {prompt_file}: no such file", EXIT_USAGE)
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{prompt_file}: not valid UTF-8 (byte {exc.start})") from None
    if not run.exists():
        fail(f"{run} does not exist", EXIT_USAGE)
    try:
        mdir = model_dir_of(run)
    except FileNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    if tokenizer == "bytes":
        tok = ByteTokenizer()
    elif tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    else:
        path = find_run_tokenizer(run)
        if path is None:
            raise DataError(f"{run}: no tokenizer.json (not trained with --data); pass --tokenizer", EXIT_USAGE)
        tok = load_tokenizer(path)
    dev = resolve_device(device)
    amp = torch.bfloat16 if (dtype == "bf16" or (dtype == "auto" and dev.type == "cuda")) else None
    model = load_pretrained(mdir, device=dev)
    try:
        model.offloaded_memories(offload)  # --offload on a model without a chunk memory: a usage error
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if stats_json is not None:
        check_writable(stats_json.parent, option="--stats-json")
    vocab = int(model.spec["model"]["vocab_size"])
    if tok.vocab_size > vocab:
        raise DataError(f"the tokenizer has {tok.vocab_size:,} ids but the model only {vocab:,}: not this model's "
                        f"tokenizer")
    ids = [tok.eos_id, *tok.encode(prompt or "").tolist()]
    typer.echo(f"prompt: {len(ids):,} tokens (EOS included); prefill in segments of {segment_len:,}", err=True)
    stream = TextStream(tok)
    stats = RunStats()
    t0 = time.perf_counter()
    n = 0
    t_first = None
    # the prompt's progress goes to stderr (stdout is the generated text), for prompts of >= 1M tokens
    with PromptDisplay(Console(stderr=True, highlight=False)) as show_prefill:
        tokens = stream_generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed, eos_id=None if ignore_eos else tok.eos_id,
                                 segment_len=segment_len, device=dev, autocast_dtype=amp, offload=offload,
                                 stats=stats, on_segment=show_prefill)
        first = next(tokens, None)  # the prefill and the first token
    for token in ([] if first is None else itertools.chain([first], tokens)):
        if t_first is None:
            t_first = time.perf_counter() - t0
        n += 1
        if token == tok.eos_id and not ignore_eos:
            break
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    sys.stdout.flush()
    total = time.perf_counter() - t0
    rate = (n - 1) / (total - t_first) if t_first is not None and n > 1 and total > t_first else 0.0
    typer.echo(f"generated {n} tokens; prefill + first token {t_first or 0:.2f}s, then {rate:.1f} tokens/s", err=True)
    typer.echo(stats.summary(), err=True)
    if stats_json is not None:
        import json

        stats_json.write_text(json.dumps({"prompt_tokens": len(ids), "generated_tokens": n, **stats.to_dict()},
                                         indent=2) + "\n")
