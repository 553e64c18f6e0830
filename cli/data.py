"""``hsa data prepare INPUT... --out DIR --tokenizer SPEC`` and ``hsa data info DIR``: real text into
token shards (:mod:`hsa_app.data.prepare`), and a check of a prepared folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._common import console, fail, guarded
from ._data import data_guarded

app = typer.Typer(
    name="data",
    help="Real text for language models: tokenize corpora into token shards, inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_INTERRUPTED = 130


@app.command("prepare")
@guarded
@data_guarded
def prepare_cmd(
    inputs: list[Path] = typer.Argument(..., help="Text files, folders, .jsonl, .parquet, .arrow, saved datasets."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (shards, index, tokenizer, manifest)."),
    tokenizer: str = typer.Option(
        "bytes", "--tokenizer", "-t",
        help="bytes (UTF-8 bytes + EOS, 257 ids), bpe:N (byte-level BPE of N ids trained on the input, each "
             "digit its own token as in LLaMA; bpe:N:merge-digits lets merges span digits, as GPT-2's) or a "
             "path to a tokenizer.json."),
    val_fraction: float = typer.Option(
        0.01, "--val-fraction", help="About this fraction of the documents go to validation, stratified by "
        "length (the middle one of every round(1/F) documents by length)."),
    text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text (JSONL, Parquet, "
                                   "Arrow, saved datasets)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Tokenizer processes."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (uint16 when the vocabulary fits), uint16, uint32."),
    shard_tokens: int = typer.Option(1 << 28, "--shard-tokens", min=1, help="Tokens per shard file at most."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave out documents that are not UTF-8 "
                                      "(counted in the manifest) instead of stopping."),
    tokenizer_sample_mb: float = typer.Option(1024, "--tokenizer-sample-mb", min=0.001,
                                              help="Train a BPE on the first this many MB of text."),
    force: bool = typer.Option(False, "--force", help="Replace data prepared (or half-prepared) with other options."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Tokenize text into token shards: deterministic, multi-process, resumable (run it again after an
    interruption and it continues)."""
    from hsa_app.data import PrepareOptions, prepare

    opts = PrepareOptions([str(p) for p in inputs], tokenizer=tokenizer, val_fraction=val_fraction,
                          text_field=text_field, dtype=dtype, shard_tokens=shard_tokens, skip_invalid=skip_invalid,
                          tokenizer_sample_bytes=int(tokenizer_sample_mb * 1e6))
    try:
        result = prepare(opts, out, workers=workers, force=force, progress=not no_progress,
                         log=lambda m: console().print(m))
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to continue ({out})", EXIT_INTERRUPTED)
    for m in result.messages:
        console().print(m)
    _summary(result.manifest, out)


def _summary(m: dict, out: Path) -> None:
    say = typer.echo  # plain lines: rich would wrap them at the terminal width
    t = m["tokenizer"]
    say(f"{out}: tokenizer {t['kind']} ({t['spec']}), vocabulary {t['vocab_size']:,}, eos {t['eos_id']}, "
                    f"dtype {m['dtype']}")
    for name, s in m["splits"].items():
        say(f"  {name:<10} {s['documents']:>9,} documents {s['tokens']:>14,} tokens  "
                        f"{len(s['shards'])} shard(s), longest document {s['longest_document']:,} tokens")
    i = m["inputs"]
    skipped = {k: i[k] for k in ("empty", "binary", "invalid_utf8") if i.get(k)}
    if skipped:
        say("  skipped: " + ", ".join(f"{v} {k.replace('_', '-')}" for k, v in skipped.items()))
    st = m.get("stats") or {}
    if st.get("mb_per_s"):
        say(f"  tokenized {st['tokenized_bytes'] / 1e6:,.1f} MB in {st['tokenize_seconds']:.1f}s with "
                        f"{st['workers']} worker(s): {st['mb_per_s']:.2f} MB/s, {st['mb_per_s_per_worker']:.2f} "
                        f"MB/s per core" + (f" (tokenizer trained in {st['tokenizer_seconds']:.1f}s)"
                                            if str(t["spec"]).startswith("bpe:") and st.get("tokenizer_seconds")
                                            else ""))
    say(f"  fingerprint {m['fingerprint'][:16]}")


@app.command("info")
@guarded
@data_guarded
def info_cmd(
    directory: Path = typer.Argument(..., help="A folder made by `hsa data prepare`."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Check sizes only, not the SHA-256 of every shard."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest."),
) -> None:
    """Check a prepared folder (manifest, sizes, SHA-256 of every shard, index) and summarise it."""
    from hsa_app.data import open_data

    data = open_data(directory, verify=not no_verify)
    for name in data.manifest["splits"]:
        data.split(name)
    if as_json:
        typer.echo(json.dumps(data.manifest, indent=2))
        return
    _summary(data.manifest, directory)
    console().print("  ok: " + ("sizes and SHA-256 match the manifest" if not no_verify else "sizes match"))
