"""``hsa data prepare``: text in, token shards out; deterministic, multi-process, resumable.

Output folder::

    DIR/
      manifest.json             counts, dtype, tokenizer, shards with SHA-256, split, options, stats
      tokenizer.json            the tokenizer (its SHA-256 is the data's tokenizer fingerprint)
      train/tokens_00000.bin    raw token ids (uint16 or uint32, little-endian): documents one after
      train/docs.npy            the other, each followed by EOS; int64 offsets of document starts (n+1)
      validation/...            the same for the validation documents

Steps: plan the work units (:mod:`.sources`), make the tokenizer (train a BPE on the input when
asked), tokenize the units in ``workers`` processes into ``DIR/.work/units/`` (each unit written
atomically; a re-run after an interruption skips the finished ones), then assemble the splits in
document order and write the manifest last. The split is made by document, stratified by length:
documents sorted by length (longest first) go to validation one in every ``k = round(1 / val_fraction)``,
the middle one of each group of ``k`` (ranks ``k//2, k//2 + k, ...``; the second longest when there are
fewer than ``k // 2 + 1`` documents), so validation holds long documents whenever the corpus has them,
while the very longest stay in training. The output depends only on the inputs and options, not on
``workers`` or on interruptions.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EXIT_USAGE, DataError
from .sources import ReadStats, Unit, plan_units, read_unit
from .tokenizer import (
    TOKENIZER_FILE,
    ByteTokenizer,
    Tokenizer,
    file_fingerprint,
    load_tokenizer,
    parse_tokenizer_spec,
    token_dtype,
    train_bpe,
)

MANIFEST = "manifest.json"
FORMAT = "hsa-token-data"
VERSION = 1
SPLITS = ("train", "validation")
WORK = ".work"


@dataclass
class PrepareOptions:
    """Everything that determines the output (saved in the manifest; a re-run must match it).

    Attributes:
        inputs: files and folders, in order.
        tokenizer: ``bytes``, ``bpe:N`` or a path to a ``tokenizer.json``.
        val_fraction: about this fraction of the documents goes to validation (0 = none).
        text_field: the text column/field of JSONL, Parquet, Arrow and saved datasets.
        dtype: ``auto`` (uint16 when the vocabulary fits, else uint32), ``uint16`` or ``uint32``.
        shard_tokens: tokens per shard file at most.
        skip_invalid: leave out documents that are not valid UTF-8 (counted) instead of failing.
        tokenizer_sample_bytes: a BPE is trained on the first this many bytes of text.
    """

    inputs: list[str]
    tokenizer: str = "bytes"
    val_fraction: float = 0.01
    text_field: str = "text"
    dtype: str = "auto"
    shard_tokens: int = 1 << 28
    skip_invalid: bool = False
    tokenizer_sample_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction {self.val_fraction}: must be in [0, 1)", EXIT_USAGE)
        if self.shard_tokens < 1:
            raise DataError(f"--shard-tokens {self.shard_tokens}: must be >= 1", EXIT_USAGE)
        if not self.inputs:
            raise DataError("no input given", EXIT_USAGE)

    def key(self) -> dict[str, Any]:
        """The options as saved (inputs as absolute paths)."""
        d = asdict(self)
        d["inputs"] = [str(Path(p).resolve()) for p in self.inputs]
        tok_kind, tok_arg = parse_tokenizer_spec(self.tokenizer)
        if tok_kind == "file":
            d["tokenizer"] = str(Path(tok_arg).resolve())
        elif tok_kind == "bpe":
            # explicit, because "bpe:N" merged digits before 2026-12-02: such a folder is not these options
            d["bpe_split_digits"] = tok_arg.split_digits
        return d


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]
    resumed_units: int = 0
    already_done: bool = False
    messages: list[str] = field(default_factory=list)


# -- the worker side --------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, dtype: str, text_field: str, skip_invalid: bool, units_dir: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: throughput per core is honest
    _WORKER.update(tok=load_tokenizer(tokenizer_path), dtype=np.dtype(dtype), text_field=text_field,
                   skip_invalid=skip_invalid, units_dir=Path(units_dir))


def _tokenize_unit(unit_dict: dict[str, Any]) -> tuple[int, int, int, float]:
    """Tokenize one unit into ``units/u_<index>.bin`` + ``.json`` (json last = done).

    Returns ``(index, input bytes, tokens, seconds)``.
    """
    t0 = time.perf_counter()
    unit = Unit.from_dict(unit_dict)
    tok: Tokenizer = _WORKER["tok"]
    dtype: np.dtype = _WORKER["dtype"]
    stats = ReadStats()
    keys: list[str] = []
    lengths: list[int] = []
    parts: list[np.ndarray] = []
    eos = np.array([tok.eos_id], dtype=np.int64)
    for key, text in read_unit(unit, text_field=_WORKER["text_field"], skip_invalid=_WORKER["skip_invalid"],
                               stats=stats):
        ids = tok.encode(text)
        if ids.size == 0:
            stats.empty += 1
            stats.documents -= 1
            continue
        parts.append(ids)
        parts.append(eos)
        keys.append(key)
        lengths.append(int(ids.size) + 1)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if tokens.size and int(tokens.max()) >= tok.vocab_size:  # a tokenizer.json whose ids exceed its size
        raise DataError(f"unit {unit.index}: token id {int(tokens.max())} >= vocabulary size {tok.vocab_size}")
    base = _WORKER["units_dir"] / f"u_{unit.index:06d}"
    tmp = base.with_suffix(f".bin.tmp-{os.getpid()}")
    tokens.astype(dtype).tofile(tmp)
    os.replace(tmp, base.with_suffix(".bin"))
    meta = {"keys": keys, "lengths": lengths, "stats": asdict(stats)}
    tmp = base.with_suffix(f".json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, base.with_suffix(".json"))
    return unit.index, unit.size, int(tokens.size), time.perf_counter() - t0


# -- the main side ----------------------------------------------------------------------------------
def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _input_signature(units: list[Unit]) -> list[list[Any]]:
    paths = sorted({f for u in units for f, _ in u.files} | {u.path for u in units if u.path})
    out = []
    for p in paths:
        st = os.stat(p) if os.path.isfile(p) else None
        out.append([p, st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return out


def _clear_output(out: Path) -> None:
    """Remove what a previous prepare wrote (and nothing else)."""
    for name in (MANIFEST, TOKENIZER_FILE):
        (out / name).unlink(missing_ok=True)
    for name in (*SPLITS, WORK):
        if (out / name).exists():
            shutil.rmtree(out / name)


def choose_validation(lengths: list[int], keys: list[str], fraction: float) -> np.ndarray:
    """``(n,)`` bool: the validation documents, stratified by length (see the module docstring)."""
    n = len(lengths)
    val = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return val
    k = max(2, round(1 / fraction))
    phase = k // 2 if n > k // 2 else 1
    order = sorted(range(n), key=lambda i: (-lengths[i], zlib.crc32(keys[i].encode()), i))
    for rank, i in enumerate(order):
        if rank % k == phase:
            val[i] = True
    return val


class _ShardWriter:
    """Writes one split's token stream into shard files of at most ``shard_tokens`` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.dir, self.split, self.dtype, self.cap = directory, split, dtype, shard_tokens
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._fh: Any = None
        self._hash: Any = None
        self._count = 0

    def _open(self) -> None:
        name = f"tokens_{len(self.shards):05d}.bin"
        self._fh = open(self.dir / name, "wb")  # noqa: SIM115 - closed by _close()
        self._hash = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": f"{self.split}/{name}", "tokens": 0, "sha256": ""})

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self.shards[-1].update(tokens=self._count, sha256=self._hash.hexdigest())
            self._fh = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        i = 0
        while i < tokens.size:
            if self._fh is None or self._count >= self.cap:
                self._close()
                self._open()
            take = min(tokens.size - i, self.cap - self._count)
            data = tokens[i:i + take].astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            self._fh.write(data)
            self._hash.update(data)
            self._count += take
            self.total += take
            i += take

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


def prepare(options: PrepareOptions, out: str | Path, *, workers: int = 1, force: bool = False,
            progress: bool = True, log: Callable[[str], None] | None = None,
            _stop_after_units: int | None = None) -> PrepareResult:
    """Tokenize ``options.inputs`` into ``out`` (see the module docstring).

    Args:
        workers: tokenizer processes (1 = in this process).
        force: replace prepared data (or an interrupted prepare) made with other options.
        _stop_after_units: tests only: stop (as if killed) after this many new units.

    Raises:
        DataError: bad input or options (one-line message; ``exit_code`` 1 or 2).
    """
    say = log or (lambda m: None)
    out = Path(out)
    key = options.key()
    if workers < 1:
        raise DataError(f"--workers {workers}: must be >= 1", EXIT_USAGE)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder", EXIT_USAGE)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("options") == key and not force:
            return PrepareResult(out, old, already_done=True, messages=[f"{out} is already prepared with these "
                                                                        "options (pass --force to redo it)"])
        if not force:
            raise DataError(f"--out {out}: already holds data prepared with other options; pass --force to "
                            f"replace it or choose another --out", EXIT_USAGE)
        _clear_output(out)
    elif out.is_dir() and any(p.name not in (WORK,) for p in out.iterdir()) and not (out / WORK).is_dir():
        raise DataError(f"--out {out}: exists and is not empty (and holds no prepared data); choose another --out",
                        EXIT_USAGE)

    t_start = time.perf_counter()
    units = plan_units(options.inputs, options.text_field)
    signature = _input_signature(units)
    work = out / WORK
    units_dir = work / "units"
    plan = json.loads(json.dumps({"options": key, "inputs": signature, "units": [u.to_dict() for u in units]}))
    plan_path = work / "plan.json"
    resumed = 0
    if plan_path.is_file():
        old_plan = json.loads(plan_path.read_text())
        if old_plan != plan:
            if not force:
                raise DataError(f"--out {out}: holds an interrupted prepare of other inputs or options; pass "
                                f"--force to start over", EXIT_USAGE)
            shutil.rmtree(work)
    units_dir.mkdir(parents=True, exist_ok=True)
    if not plan_path.is_file():
        _atomic_json(plan_path, plan)
    total_bytes = sum(u.size for u in units)

    # -- tokenizer ---------------------------------------------------------------------------------
    tok_path = work / TOKENIZER_FILE
    tok_kind, tok_arg = parse_tokenizer_spec(options.tokenizer)
    if tok_kind == "bpe":
        token_dtype(tok_arg.vocab_size, options.dtype)  # a BPE too large for --dtype is refused before training it
    tok_seconds = 0.0
    if not tok_path.is_file():
        t0 = time.perf_counter()
        if tok_kind == "bytes":
            tok: Tokenizer = ByteTokenizer()
        elif tok_kind == "file":
            tok = load_tokenizer(tok_arg)
        else:
            digits = "each digit its own token" if tok_arg.split_digits else "merges across digits"
            say(f"training a byte-level BPE of {tok_arg.vocab_size:,} ids ({digits}) on up to "
                f"{options.tokenizer_sample_bytes / 1e6:,.0f} MB of the input")
            tok = train_bpe(_sample_texts(units, options), tok_arg.vocab_size, split_digits=tok_arg.split_digits,
                            progress=progress)
        tok.save(work)
        tok_seconds = time.perf_counter() - t0
    tok = load_tokenizer(tok_path)
    dtype = token_dtype(tok.vocab_size, options.dtype)

    # -- tokenize the units ------------------------------------------------------------------------
    pending = [u for u in units if not (units_dir / f"u_{u.index:06d}.json").is_file()]
    resumed = len(units) - len(pending)
    if resumed:
        say(f"resuming: {resumed} of {len(units)} units already tokenized")
    done_bytes = sum(u.size for u in units) - sum(u.size for u in pending)
    t_tok = time.perf_counter()
    new_bytes = 0
    init_args = (str(tok_path), dtype.str, options.text_field, options.skip_invalid, str(units_dir))
    bar = _progress(progress)
    with bar:
        task = bar.add_task("tokenize", total=max(1, total_bytes), completed=done_bytes, info="")
        for n_done, (_, nbytes, _, _) in enumerate(_run_units(pending, workers, init_args)):
            new_bytes += nbytes
            elapsed = time.perf_counter() - t_tok
            bar.update(task, advance=nbytes, info=f"{new_bytes / 1e6 / max(elapsed, 1e-9):.1f} MB/s")
            if _stop_after_units is not None and n_done + 1 >= _stop_after_units:
                raise KeyboardInterrupt("stopped for a test")
    tok_elapsed = time.perf_counter() - t_tok

    # -- assemble ----------------------------------------------------------------------------------
    manifest = _assemble(out, work, units, tok, tok_path, dtype, options, key)
    mb = new_bytes / 1e6
    manifest["stats"] = {
        "seconds": round(time.perf_counter() - t_start, 3), "tokenizer_seconds": round(tok_seconds, 3),
        "tokenize_seconds": round(tok_elapsed, 3), "workers": workers, "tokenized_bytes": new_bytes,
        "mb_per_s": round(mb / tok_elapsed, 3) if tok_elapsed > 0 and mb else None,
        "mb_per_s_per_worker": round(mb / tok_elapsed / workers, 3) if tok_elapsed > 0 and mb else None,
        "resumed_units": resumed,
    }
    _atomic_json(manifest_path, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return PrepareResult(out, manifest, resumed_units=resumed)


def _sample_texts(units: list[Unit], options: PrepareOptions) -> Iterator[str]:
    budget = options.tokenizer_sample_bytes
    for unit in units:
        for _, text in read_unit(unit, text_field=options.text_field, skip_invalid=options.skip_invalid):
            yield text
            budget -= len(text)
            if budget <= 0:
                return


def _run_units(pending: list[Unit], workers: int, init_args: tuple[Any, ...]) -> Iterator[tuple[int, int, int, float]]:
    if not pending:
        return
    dicts = [u.to_dict() for u in pending]
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        if workers == 1:
            _init_worker(*init_args)
            for d in dicts:
                yield _tokenize_unit(d)
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before forking: no warning, no deadlock
        with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            yield from pool.imap_unordered(_tokenize_unit, dicts)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
        _WORKER.clear()


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]tokenize"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)


def _assemble(out: Path, work: Path, units: list[Unit], tok: Tokenizer, tok_path: Path, dtype: np.dtype,
              options: PrepareOptions, key: dict[str, Any]) -> dict[str, Any]:
    units_dir = work / "units"
    metas = [json.loads((units_dir / f"u_{u.index:06d}.json").read_text()) for u in units]
    stats = ReadStats()
    for m in metas:
        stats.add(ReadStats(**m["stats"]))
    keys = [k for m in metas for k in m["keys"]]
    lengths = [n for m in metas for n in m["lengths"]]
    if not lengths:
        skipped = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in asdict(stats).items()
                            if k in ("empty", "binary", "invalid_utf8") and v)
        raise DataError(f"no text found in {', '.join(options.inputs)}" + (f" (skipped: {skipped})" if skipped else ""))
    val = choose_validation(lengths, keys, options.val_fraction)
    stage = work / "out"
    if stage.exists():
        shutil.rmtree(stage)
    writers = {s: _ShardWriter(stage / s, s, dtype, options.shard_tokens) for s in SPLITS}
    offsets: dict[str, list[int]] = {s: [0] for s in SPLITS}
    longest = dict.fromkeys(SPLITS, 0)
    doc = 0
    for u, m in zip(units, metas):
        if not m["lengths"]:
            continue
        tokens = np.fromfile(units_dir / f"u_{u.index:06d}.bin", dtype=dtype)
        pos = 0
        for n in m["lengths"]:
            split = "validation" if val[doc] else "train"
            writers[split].write(tokens[pos:pos + n])
            offsets[split].append(offsets[split][-1] + n)
            longest[split] = max(longest[split], n)
            pos += n
            doc += 1
    splits: dict[str, Any] = {}
    for s in SPLITS:
        shards = writers[s].finish()
        index = np.asarray(offsets[s], dtype=np.int64)
        index_path = stage / s / "docs.npy"
        index_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(index_path, index)
        splits[s] = {"documents": len(index) - 1, "tokens": int(index[-1]), "longest_document": longest[s],
                     "shards": shards, "index": f"{s}/docs.npy", "index_sha256": file_fingerprint(index_path)}
    tok_sha = file_fingerprint(tok_path)
    fp = hashlib.sha256(tok_sha.encode())
    for s in SPLITS:
        fp.update(splits[s]["index_sha256"].encode())
        for sh in splits[s]["shards"]:
            fp.update(sh["sha256"].encode())
    # Move into place: splits and tokenizer first, the manifest (written by the caller) last.
    for s in SPLITS:
        if (out / s).exists():
            shutil.rmtree(out / s)
        os.replace(stage / s, out / s)
    shutil.copyfile(tok_path, out / TOKENIZER_FILE)
    return {
        "format": FORMAT, "version": VERSION, "fingerprint": fp.hexdigest(), "dtype": dtype.name,
        "tokenizer": {"kind": tok.kind, "spec": options.tokenizer, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "file": TOKENIZER_FILE, "sha256": tok_sha},
        "splits": splits,
        "inputs": {**asdict(stats), "units": len(units)},
        "options": key,
    }
