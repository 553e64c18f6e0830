"""Tokenizers for real text: UTF-8 bytes, or a Hugging Face ``tokenizers`` model (a local
``tokenizer.json``, or a byte-level BPE trained on the input).

Every tokenizer is stored as one ``tokenizer.json`` file; its SHA-256 (of the file's bytes) is the
*fingerprint* that ties prepared data to the runs trained on it: ``hsa train --data``, ``hsa eval
ppl`` and ``hsa eval passkey --filler text:DIR`` refuse data whose fingerprint is not the run's.

Every tokenizer has an end-of-document id (``eos_id``), written after each document when data is
prepared. The bytes tokenizer has ids 0-255 (the bytes) and 256 (EOS).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EXIT_USAGE, DataError

if TYPE_CHECKING:
    from .shards import TokenData

TOKENIZER_FILE = "tokenizer.json"
RUN_TOKENIZER = TOKENIZER_FILE  # RUN/tokenizer.json: the tokenizer a run was trained with
EOS_TOKEN = "<|endoftext|>"
# Names of end-of-text tokens in common tokenizer.json files, tried in order.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]", "<|im_end|>")
# Long documents are encoded in pieces cut after a newline (bounded memory for multi-MB documents).
PIECE_CHARS = 1 << 18


def _require_tokenizers(what: str) -> Any:
    from hsa_core.errors import require

    return require("tokenizers", what=what, extra="data")


class Tokenizer(ABC):
    """Base class: ``encode(text) -> (n,) int64``, ``decode(ids) -> str``, ``vocab_size``, ``eos_id``,
    ``kind`` (``"bytes"`` or ``"hf"``), ``to_json()`` (the ``tokenizer.json`` text)."""

    kind: str = ""
    vocab_size: int = 0
    eos_id: int = 0

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """See the class docstring."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """See the class docstring."""

    @abstractmethod
    def to_json(self) -> str:
        """See the class docstring."""

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.kind} (vocabulary {self.vocab_size:,}, eos {self.eos_id})"

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer as ``tokenizer.json`` inside ``directory``, atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0-255, EOS = 256, vocabulary 257. Lossless for any text."""

    kind = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"hsa_tokenizer": "bytes", "version": 1, "vocab_size": 257, "eos_id": 256},
                          indent=2) + "\n"


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer``; an end-of-text token is found by name
    (:data:`EOS_CANDIDATES`) or added as ``<|endoftext|>``."""

    kind = "hf"

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        eos = next((i for i in (tok.token_to_id(n) for n in EOS_CANDIDATES) if i is not None), None)
        if eos is None:
            tok.add_special_tokens([EOS_TOKEN])
            eos = tok.token_to_id(EOS_TOKEN)
        self.eos_id = int(eos)
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self._json = tok.to_str()

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> HFTokenizer:
        tokenizers = _require_tokenizers("a tokenizer.json tokenizer")
        try:
            return cls(tokenizers.Tokenizer.from_str(text))
        except Exception as exc:  # the Rust side raises a bare Exception with its parse error
            raise DataError(f"{source}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None

    def encode(self, text: str) -> np.ndarray:
        pieces = split_pieces(text)
        fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        encs = fast(pieces, add_special_tokens=False)
        parts = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self._json


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each ending after a newline when one
    is near (the cut points depend only on the text, so encoding stays deterministic)."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = start + size
        if end >= len(text):
            out.append(text[start:])
            break
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else nl + 1
        out.append(text[start:end])
        start = end
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, *, split_digits: bool = True,
              progress: bool = False) -> HFTokenizer:
    """A byte-level BPE with ``vocab_size`` ids trained on ``texts`` (HF ``tokenizers``' trainer, with
    its own progress bar when ``progress``); id 0 is ``<|endoftext|>``. Deterministic for the same
    texts in the same order.

    ``split_digits``: every decimal digit is its own pre-token, so no merge spans two digits and a
    number is one token per digit, as in LLaMA's and Mistral's tokenizers. Why it is the default:
    with merges across digits (GPT-2's byte-level BPE), a 5-digit passkey became two tokens split
    1+4, 2+3 or 3+2 digits by chance, and the split decided how hard the key was to copy. Measured on
    the H200 (real-text run 9, 900 samples per model): keys split 1+4 (a lone digit, then a 4-digit
    token) were missed 72.5% (RAMba) and 67.5% (SWA+HSA) of the time, 2+3 keys 8.2% and 4.8%, 3+2
    keys 4.2% and 1.9%; the two models missed the same samples (40 in common against 7 expected by
    chance). Digit by digit, every key is the same kind of token sequence.
    """
    tokenizers = _require_tokenizers("training a BPE tokenizer (--tokenizer bpe:N)")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise DataError(f"--tokenizer bpe:{vocab_size}: the vocabulary must hold the {len(alphabet)} byte "
                        f"symbols and <|endoftext|> plus merges; use at least {len(alphabet) + 2}", EXIT_USAGE)
    tok = tokenizers.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet,
                                  show_progress=progress)

    def pieces() -> Iterable[str]:
        for t in texts:
            yield from split_pieces(t)

    tok.train_from_iterator(pieces(), trainer=trainer)
    return HFTokenizer(tok)


@dataclass(frozen=True)
class BpeSpec:
    """``--tokenizer bpe:N[:merge-digits]``: a BPE of ``vocab_size`` ids to train on the input."""

    vocab_size: int
    split_digits: bool = True


def parse_tokenizer_spec(spec: str) -> tuple[str, Any]:
    """``"bytes"`` -> ``("bytes", None)``; ``"bpe:32000"`` -> ``("bpe", BpeSpec(32000))`` (each digit its
    own token); ``"bpe:32000:merge-digits"`` -> ``("bpe", BpeSpec(32000, split_digits=False))``;
    anything else is a path to a ``tokenizer.json`` (or a folder holding one) -> ``("file", Path)``."""
    s = spec.strip()
    if s == "bytes":
        return "bytes", None
    if s.startswith("bpe:"):
        size, _, flag = s[4:].partition(":")
        try:
            n = int(size.replace("_", "").lower().replace("k", "000"))
        except ValueError:
            raise DataError(f"--tokenizer {spec!r}: expected bpe:<vocabulary size>, e.g. bpe:32000",
                            EXIT_USAGE) from None
        if flag not in ("", "merge-digits"):
            raise DataError(f"--tokenizer {spec!r}: unknown BPE option {flag!r}; the one allowed is merge-digits "
                            "(bpe:N:merge-digits: merges may span digits, as GPT-2's)", EXIT_USAGE)
        return "bpe", BpeSpec(n, split_digits=not flag)
    path = Path(s)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"--tokenizer {spec!r}: not 'bytes', 'bpe:N' or an existing tokenizer.json", EXIT_USAGE)
    return "file", path


def tokenizer_from_json(text: str, source: str = TOKENIZER_FILE) -> Tokenizer:
    """A tokenizer from the text of a ``tokenizer.json`` (ours for bytes, or Hugging Face's)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and data.get("hsa_tokenizer") == "bytes":
        return ByteTokenizer()
    return HFTokenizer.from_json(text, source)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load ``path`` (a ``tokenizer.json`` or a folder holding one). The fingerprint of the result is
    that of the file only when the file was written by :meth:`Tokenizer.save`; use
    :func:`file_fingerprint` for the stored file's own."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer there", EXIT_USAGE)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 tokenizer.json") from None
    return tokenizer_from_json(text, str(path))


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """``uint16`` when every id fits (vocabulary <= 65,536), else ``uint32``; a requested dtype too
    small for the vocabulary is an error."""
    if requested not in ("auto", "uint16", "uint32"):
        raise DataError(f"--dtype {requested!r}: allowed auto, uint16, uint32", EXIT_USAGE)
    if requested == "uint16" and vocab_size > 1 << 16:
        raise DataError(f"--dtype uint16 holds ids below 65,536 but the tokenizer's vocabulary has "
                        f"{vocab_size:,} ids; use --dtype uint32 (or auto)")
    if requested == "uint32" or (requested == "auto" and vocab_size > 1 << 16):
        return np.dtype(np.uint32)
    return np.dtype(np.uint16)


def find_run_tokenizer(run: Path) -> Path | None:
    """The tokenizer of a run or model directory: ``RUN/tokenizer.json``, ``RUN/model/tokenizer.json``,
    or that of the run a model directory belongs to (``RUN/model``, ``RUN/checkpoints/step_N/model``);
    ``None`` when there is none."""
    run = Path(run)
    for cand in (run, run / "model"):
        if (cand / RUN_TOKENIZER).is_file():
            return cand / RUN_TOKENIZER
    if (run / "config.json").is_file():  # a model directory: look in the run above it
        for parent in list(run.resolve().parents)[:3]:
            if (parent / RUN_TOKENIZER).is_file() and (parent / "train_config.json").is_file():
                return parent / RUN_TOKENIZER
    return None


def check_tokenizer_match(run: Path, data: TokenData) -> Path:
    """The run's tokenizer file, after checking that ``data`` was prepared with it."""
    tok = find_run_tokenizer(run)
    if tok is None:
        raise DataError(f"{run}: no {RUN_TOKENIZER} (the run was not trained with --data); its tokenizer is unknown",
                        EXIT_USAGE)
    if file_fingerprint(tok) != data.tokenizer_sha256:
        raise DataError(f"{data.root} was prepared with another tokenizer ({data.tokenizer_path}) than {run} was "
                        f"trained with ({tok}); prepare the data with --tokenizer {tok}")
    return tok
