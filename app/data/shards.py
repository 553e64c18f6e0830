"""Reading prepared data (``hsa data prepare``'s folder): the manifest, memory-mapped shards, the
document index, with every check that turns a damaged folder into a one-line :class:`DataError`.

Example::

    data = open_data("data/realtext")            # checks the manifest, sizes and (by default) SHA-256
    train = data.split("train")
    ids = train.read(0, 4097)                     # (4097,) int64 across shard boundaries
    doc = train.document(3)                       # the 4th document, its EOS included
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EXIT_USAGE, DataError
from .tokenizer import TOKENIZER_FILE, Tokenizer, file_fingerprint, load_tokenizer

MANIFEST = "manifest.json"
FORMAT = "hsa-token-data"
DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32}


class TokenSplit:
    """One split: a stream of ``num_tokens`` ids in shard files and ``doc_offsets`` ``(n+1,)``."""

    def __init__(self, root: Path, name: str, info: dict[str, Any], dtype: np.dtype, vocab_size: int,
                 verify: bool) -> None:
        self.name = name
        self.dtype = dtype
        self.vocab_size = vocab_size
        self._maps: list[np.ndarray] = []
        starts = [0]
        for shard in info["shards"]:
            path = root / shard["file"]
            expected = int(shard["tokens"]) * dtype.itemsize
            if not path.is_file():
                raise DataError(f"{path}: shard missing (listed in {root / MANIFEST}); prepare the data again")
            size = path.stat().st_size
            if size != expected:
                raise DataError(f"{path}: {size:,} bytes, the manifest says {expected:,} (truncated or "
                                f"corrupted shard); prepare the data again")
            if verify and _sha256(path) != shard["sha256"]:
                raise DataError(f"{path}: SHA-256 differs from the manifest's (corrupted shard); prepare the data "
                                f"again")
            self._maps.append(np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r") if expected
                              else np.zeros(0, dtype=dtype))
            starts.append(starts[-1] + int(shard["tokens"]))
        self._starts = np.asarray(starts, dtype=np.int64)
        self.num_tokens = int(starts[-1])
        index_path = root / info["index"]
        if not index_path.is_file():
            raise DataError(f"{index_path}: document index missing; prepare the data again")
        if verify and file_fingerprint(index_path) != info.get("index_sha256"):
            raise DataError(f"{index_path}: SHA-256 differs from the manifest's (corrupted index); prepare the data "
                            f"again")
        try:
            offsets = np.load(index_path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{index_path}: unreadable document index ({exc})") from None
        if (offsets.ndim != 1 or offsets.size != int(info["documents"]) + 1 or offsets[0] != 0
                or offsets[-1] != self.num_tokens or (offsets.size > 1 and np.any(np.diff(offsets) <= 0))):
            raise DataError(f"{index_path}: the document index does not match the shards (corrupted); prepare "
                            f"the data again")
        self.doc_offsets = offsets.astype(np.int64)

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.size - 1)

    @cached_property
    def doc_lengths(self) -> np.ndarray:
        """``(n,)`` tokens per document (its EOS included)."""
        return np.diff(self.doc_offsets)

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the stream as ``(end - start,)`` int64 (across shards)."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"{self.name}: range [{start}, {end}) outside [0, {self.num_tokens})")
        parts = []
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < end:
            lo = pos - int(self._starts[i])
            take = min(end - pos, int(self._starts[i + 1]) - pos)
            parts.append(np.asarray(self._maps[i][lo:lo + take], dtype=np.int64))
            pos += take
            i += 1
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        if out.size and int(out.max()) >= self.vocab_size:
            raise DataError(f"{self.name}: token id {int(out.max())} in [{start}, {end}) is outside the vocabulary "
                            f"({self.vocab_size}); the shard is corrupted")
        return out

    def document(self, i: int) -> np.ndarray:
        """Document ``i`` (its trailing EOS included) as int64."""
        return self.read(int(self.doc_offsets[i]), int(self.doc_offsets[i + 1]))


class TokenData:
    """A prepared data folder. Use :func:`open_data`."""

    def __init__(self, root: Path, manifest: dict[str, Any], verify: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.verify = verify
        self._splits: dict[str, TokenSplit] = {}

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.manifest["tokenizer"]["sha256"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["tokenizer"]["eos_id"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER_FILE

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)

    def split(self, name: str) -> TokenSplit:
        if name not in self._splits:
            info = self.manifest["splits"].get(name)
            if info is None:
                raise DataError(f"{self.root}: no split {name!r} (has: {', '.join(self.manifest['splits'])})")
            self._splits[name] = TokenSplit(self.root, name, info, np.dtype(self.manifest["dtype"]), self.vocab_size,
                                            self.verify)
        return self._splits[name]


def open_data(directory: str | Path, *, verify: bool = True) -> TokenData:
    """Open and check a prepared data folder.

    Checks the manifest (format, dtype large enough for the vocabulary, tokenizer file and its
    SHA-256); each split's shards are checked (size always, SHA-256 when ``verify``) when it is
    first opened with :meth:`TokenData.split`.

    Raises:
        DataError: exit code 2 for a missing folder, 1 for anything damaged.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder (make one with `hsa data prepare`)", EXIT_USAGE)
    mpath = root / MANIFEST
    if not mpath.is_file():
        hint = " (an interrupted prepare: run the same `hsa data prepare` again)" if (root / ".work").is_dir() else ""
        raise DataError(f"{root}: no {MANIFEST}; not a prepared data folder{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{mpath}: not valid JSON ({exc}); prepare the data again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{mpath}: not an hsa-toolkit data manifest (format {manifest.get('format')!r})"
                        if isinstance(manifest, dict) else f"{mpath}: not an hsa-toolkit data manifest")
    try:
        dtype, vocab = str(manifest["dtype"]), int(manifest["tokenizer"]["vocab_size"])
        tok_sha = str(manifest["tokenizer"]["sha256"])
        for s in manifest["splits"].values():
            _ = (s["shards"], s["index"], s["documents"], s["tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{mpath}: incomplete manifest (missing {exc}); prepare the data again") from None
    if dtype not in DTYPES:
        raise DataError(f"{mpath}: dtype {dtype!r} not supported (allowed: {', '.join(DTYPES)})")
    if vocab > DTYPES[dtype]:
        raise DataError(f"{mpath}: the vocabulary ({vocab:,} ids) does not fit the token dtype {dtype} "
                        f"(at most {DTYPES[dtype]:,} ids)")
    tpath = root / TOKENIZER_FILE
    if not tpath.is_file():
        raise DataError(f"{tpath}: missing; prepare the data again")
    if file_fingerprint(tpath) != tok_sha:
        raise DataError(f"{tpath}: differs from the tokenizer the data was prepared with (SHA-256 mismatch)")
    return TokenData(root, manifest, verify)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
