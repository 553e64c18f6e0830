"""``hsa generate RUN --prompt TEXT | --prompt-file FILE``: continue a prompt with a trained language
model, streaming the decoded text to stdout (prompt statistics go to stderr).

``hsa generate RUN --prompts FILE [--out FILE]``: continue every prompt of a JSON Lines file, prompts of
different lengths prefilled together in batches (:func:`hsa_core.generation.generate_batch`), one JSON
result a prompt to ``--out`` (written atomically) or stdout (:mod:`._prompts`)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ._common import EXIT_USAGE, check_writable, fail, guarded
from ._data import data_guarded

if TYPE_CHECKING:
    from ._prompts import Prompt


@guarded
@data_guarded
def generate(
    run: Path = typer.Argument(..., help="Run directory of `hsa train --data` (or a model directory)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt text."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", "-f", help="Read the prompt from this UTF-8 file "
                                            "(any length: it is prefilled segment by segment)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Many prompts: a JSON Lines file, one JSON string "
                                        'or {"id": ..., "prompt": "..."} object a line; results as JSON Lines.'),
    out: Path | None = typer.Option(None, "--out", "-o", help="With --prompts: write the results here (default: "
                                    "stdout)."),
    force: bool = typer.Option(False, "--force", help="With --out: replace an existing file."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="With --prompts: prompts prefilled together."),
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
    from hsa_app.runtime.pinned import fast_pinned_memory
    from hsa_app.training.text_data import find_run_tokenizer
    from rich.console import Console

    from hsa_core.devices import resolve_device
    from hsa_core.generation import RunStats, TextStream, stream_generate
    from hsa_core.model import load_pretrained

    from ._progress import PromptDisplay
    from ._prompts import read_prompts, read_utf8

    fast_pinned_memory()  # before anything starts CUDA
    if sum(x is not None for x in (prompt, prompt_file, prompts)) != 1:
        fail("give exactly one of --prompt, --prompt-file and --prompts", EXIT_USAGE)
    if prompts is None and (out is not None or force):
        fail("--out and --force go with --prompts (one prompt streams to stdout)", EXIT_USAGE)
    items = read_prompts(prompts) if prompts is not None else None
    if out is not None:
        if out.exists() and not force:
            fail(f"--out {out} exists; pass --force to replace it", EXIT_USAGE)
        check_writable(out.parent)
    if prompt_file is not None:
        prompt = read_utf8(prompt_file, "--prompt-file")
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
    eos_id = None if ignore_eos else tok.eos_id
    if items is not None:
        _generate_many(model, tok, items, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id,
                       segment_len=segment_len, amp=amp, offload=offload, stats_json=stats_json)
        return
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
                                 top_p=top_p, seed=seed, eos_id=eos_id,
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
        _write_stats(stats_json, {"prompt_tokens": len(ids), "generated_tokens": n, **stats.to_dict()})


def _write_stats(path: Path, figures: dict[str, Any]) -> None:
    from hsa_app.runtime.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps(figures, indent=2) + "\n")


def _generate_many(model: Any, tok: Any, items: list[Prompt], out: Path | None, *, batch_size: int, max_new_tokens: int,
                   temperature: float, top_k: int | None, top_p: float | None, seed: int, eos_id: int | None,
                   segment_len: int, amp: Any, offload: bool | None, stats_json: Path | None) -> None:
    """Continue every prompt of ``items`` (:class:`._prompts.Prompt`), ``batch_size`` prompts prefilled together;
    the results go to ``out`` atomically once all are done, or to stdout a batch at a time.

    Greedy output equals that of each prompt alone. Sampling draws batch ``i`` from seed ``seed + i`` (one
    generator per group of equal-length prompts inside it), so the same file, ``--batch-size`` and ``--seed``
    give the same text."""
    from hsa_app.runtime.checkpoint import write_text_atomic
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hsa_core.generation import RunStats, generate_batch

    from ._prompts import result_record

    encoded = [[tok.eos_id, *tok.encode(p.text).tolist()] for p in items]
    typer.echo(f"prompts: {len(items):,}, {sum(map(len, encoded)):,} tokens (an EOS before each); batches of "
               f"{batch_size}, prefill in segments of {segment_len:,}", err=True)
    stats, lines, n_new, t0 = RunStats(), [], 0, time.perf_counter()
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("generate", total=len(items))
        for i, start in enumerate(range(0, len(items), batch_size)):
            batch = encoded[start:start + batch_size]
            generated = generate_batch(model, batch, max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_k=top_k, top_p=top_p, seed=seed + i, eos_id=eos_id,
                                       segment_len=segment_len, autocast_dtype=amp, offload=offload, stats=stats)
            for j, ids in enumerate(generated):
                ended = eos_id is not None and bool(ids) and ids[-1] == eos_id
                text = tok.decode(ids[:-1] if ended else ids)
                record = result_record(start + j, items[start + j], len(batch[j]), ids, text, ended)
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                n_new += len(ids)
            if out is None:  # stdout: a batch as soon as it is done
                sys.stdout.write("".join(lines[start:]))
                sys.stdout.flush()
            progress.advance(task, len(batch))
    if out is not None:
        write_text_atomic(out, "".join(lines))
    typer.echo(f"generated {n_new:,} tokens for {len(items):,} prompts in {time.perf_counter() - t0:.2f}s"
               + (f"; results in {out}" if out is not None else ""), err=True)
    typer.echo(stats.summary(), err=True)
    if stats_json is not None:
        _write_stats(stats_json, {"prompts": len(items), "prompt_tokens": sum(map(len, encoded)),
                                  "generated_tokens": n_new, **stats.to_dict()})
