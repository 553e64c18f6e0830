"""Reading documents from the inputs of ``hsa data prepare``, as deterministic work units.

Inputs and what a document is:

* a text file (any name not listed below; ``.gz`` is decompressed): the whole file;
* a folder: every file below it in sorted order (hidden files and folders skipped), each read by its
  own kind; files with a NUL byte in their first 8 KiB are skipped as binary (counted);
* ``.jsonl`` / ``.jsonl.gz``: one document per line, a JSON string or an object whose ``text_field``
  (default ``text``) is the text;
* ``.parquet`` and ``.arrow`` files, and a dataset saved with ``datasets``' ``save_to_disk`` (a folder
  with ``dataset_info.json``/``state.json`` or ``dataset_dict.json``): one document per row, column
  ``text_field``. These need the ``data`` extra (``datasets``, which brings ``pyarrow``); nothing is
  ever downloaded (``HF_DATASETS_OFFLINE=1``).

The inputs are cut into :class:`Unit` s (groups of small text files, byte ranges of a JSONL file, row
groups of a Parquet file, row ranges of a dataset) that depend only on the inputs, never on the number
of workers: that is what makes the output identical for any ``--workers`` and lets an interrupted
run skip the units already done. Every document has a stable key (``<source>@<item>``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, DataError

TEXT_GROUP_BYTES = 8 << 20  # small text files are grouped into units of about this size
TEXT_GROUP_FILES = 512
JSONL_RANGE_BYTES = 32 << 20  # JSONL files are cut into byte ranges of this size
DATASET_ROWS = 20_000
BINARY_PROBE = 8192


@dataclass
class Unit:
    """One piece of work: ``kind`` in text | jsonl | parquet | arrow | dataset.

    ``files`` holds ``(path, key prefix)`` pairs for text units; the other kinds read ``path`` between
    ``start`` and ``end`` (bytes for jsonl, row group for parquet, rows for datasets).
    """

    index: int
    kind: str
    path: str = ""
    key: str = ""
    start: int = 0
    end: int = 0
    files: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0  # input bytes (progress and throughput)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        d = dict(d)
        d["files"] = [tuple(x) for x in d.get("files", [])]
        return cls(**d)


@dataclass
class ReadStats:
    """What a unit's reading skipped (summed into the manifest)."""

    documents: int = 0
    bytes: int = 0
    empty: int = 0
    binary: int = 0
    invalid_utf8: int = 0

    def add(self, other: ReadStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


def _kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return "text"


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def plan_units(inputs: list[str | Path], text_field: str = "text") -> list[Unit]:
    """Cut ``inputs`` into work units (in input order; folders in sorted order).

    Raises:
        DataError: a missing input (exit 2), or a folder/file that holds no readable file.
    """
    units: list[Unit] = []
    pending: list[tuple[str, str]] = []
    pending_size = 0

    def flush() -> None:
        nonlocal pending, pending_size
        if pending:
            units.append(Unit(len(units), "text", files=pending, size=pending_size))
        pending, pending_size = [], 0

    def add_file(path: Path, key: str) -> None:
        nonlocal pending_size
        kind = _kind_of(path)
        size = path.stat().st_size
        if kind == "text":
            if pending and (pending_size + size > TEXT_GROUP_BYTES or len(pending) >= TEXT_GROUP_FILES):
                flush()
            pending.append((str(path), key))
            pending_size += size
            return
        flush()
        if kind == "jsonl" and not path.name.lower().endswith(".gz") and size > JSONL_RANGE_BYTES:
            for a in range(0, size, JSONL_RANGE_BYTES):
                b = min(size, a + JSONL_RANGE_BYTES)
                units.append(Unit(len(units), "jsonl", str(path), key, a, b, size=b - a))
        elif kind == "jsonl":
            units.append(Unit(len(units), "jsonl", str(path), key, 0, size, size=size))
        elif kind == "parquet":
            pq = _pyarrow_parquet()
            try:
                groups = pq.ParquetFile(str(path)).num_row_groups
            except Exception as exc:
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
            for g in range(groups):
                units.append(Unit(len(units), "parquet", str(path), key, g, g + 1, size=size // max(1, groups)))
        else:  # arrow
            units.append(Unit(len(units), "arrow", str(path), key, size=size))

    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory", EXIT_USAGE)
        if path.is_dir() and _is_saved_dataset(path):
            flush()
            for split_name, n_rows, size in _dataset_parts(path):
                for a in range(0, n_rows, DATASET_ROWS):
                    b = min(n_rows, a + DATASET_ROWS)
                    units.append(Unit(len(units), "dataset", str(path), f"{path.name}/{split_name}" if split_name
                                      else path.name, a, b, size=int(size * (b - a) / max(1, n_rows))))
        elif path.is_dir():
            files = _walk(path)
            if not files:
                raise DataError(f"{path}: the folder holds no files")
            for f in files:
                add_file(f, f"{path.name}/{f.relative_to(path).as_posix()}")
        else:
            add_file(path, path.name)
    flush()
    return units


# -- reading ---------------------------------------------------------------------------------------
def read_unit(unit: Unit, *, text_field: str = "text", skip_invalid: bool = False,
              stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(key, text)`` for every non-empty document of ``unit``; ``stats`` counts the rest."""
    stats = stats if stats is not None else ReadStats()
    if unit.kind == "text":
        gen: Iterator[tuple[str, str]] = _read_text_files(unit, skip_invalid, stats)
    elif unit.kind == "jsonl":
        gen = _read_jsonl(unit, text_field, skip_invalid, stats)
    elif unit.kind in ("parquet", "arrow", "dataset"):
        gen = _read_table(unit, text_field, stats)
    else:
        raise DataError(f"unknown unit kind {unit.kind!r}")
    for key, text in gen:
        if not text:
            stats.empty += 1
            continue
        stats.documents += 1
        yield key, text


def _decode(data: bytes, where: str, skip_invalid: bool, stats: ReadStats) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if skip_invalid:
            stats.invalid_utf8 += 1
            return None
        raise DataError(f"{where}: not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); "
                        f"convert it to UTF-8 or pass --skip-invalid to leave such documents out") from None


def _read_text_files(unit: Unit, skip_invalid: bool, stats: ReadStats) -> Iterator[tuple[str, str]]:
    for path, key in unit.files:
        opener = gzip.open if path.lower().endswith(".gz") else open
        try:
            with opener(path, "rb") as fh:
                data = fh.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: cannot be read ({exc})") from None
        stats.bytes += len(data)
        if b"\0" in data[:BINARY_PROBE]:
            stats.binary += 1
            continue
        text = _decode(data, path, skip_invalid, stats)
        if text is not None:
            yield key, text


def _read_jsonl(unit: Unit, text_field: str, skip_invalid: bool, stats: ReadStats) -> Iterator[tuple[str, str]]:
    gz = unit.path.lower().endswith(".gz")
    with (gzip.open(unit.path, "rb") if gz else open(unit.path, "rb")) as raw:
        fh = raw if gz else io.BufferedReader(raw)  # type: ignore[arg-type]
        pos = unit.start
        if pos > 0:  # start at the first line that begins inside [start, end)
            fh.seek(pos - 1)
            pos += len(fh.readline()) - 1
        while gz or pos < unit.end:
            line = fh.readline()
            if not line:
                break
            offset = pos
            pos += len(line)
            stats.bytes += len(line)
            if not line.strip():
                continue
            where = f"{unit.path} (byte {offset})"
            text = _decode(line, where, skip_invalid, stats)
            if text is None:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not a JSON line ({exc.msg} at column {exc.colno})") from None
            yield f"{unit.key}@{offset}", _field(row, text_field, where)


def _field(row: Any, text_field: str, where: str) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or text_field not in row:
        have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{where}: no field {text_field!r} (has: {have}); choose one with --text-field")
    value = row[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is {type(value).__name__}, expected text")
    return value


def _pyarrow_parquet() -> Any:
    from hsa_core.errors import require

    require("pyarrow", what="reading Parquet/Arrow input", extra="data")
    import pyarrow.parquet as pq

    return pq


def _column(table: Any, text_field: str, where: str) -> list[Any]:
    if text_field not in table.column_names:
        raise DataError(f"{where}: no column {text_field!r} (columns: {', '.join(table.column_names)}); "
                        f"choose one with --text-field")
    return table.column(text_field).to_pylist()


def _read_table(unit: Unit, text_field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    if unit.kind == "parquet":
        pq = _pyarrow_parquet()
        table = pq.ParquetFile(unit.path).read_row_group(unit.start)
        offset = sum(pq.ParquetFile(unit.path).metadata.row_group(g).num_rows for g in range(unit.start))
        rows = _column(table, text_field, unit.path)
    elif unit.kind == "arrow":
        _pyarrow_parquet()
        import pyarrow as pa

        try:
            with pa.memory_map(unit.path) as source:
                try:
                    table = pa.ipc.open_file(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid as exc:
            raise DataError(f"{unit.path}: not a readable Arrow file ({exc})") from None
        offset, rows = 0, _column(table, text_field, unit.path)
    else:
        ds = _load_dataset_split(Path(unit.path), unit.key)
        if text_field not in ds.column_names:
            raise DataError(f"{unit.path}: no column {text_field!r} (columns: {', '.join(ds.column_names)}); "
                            f"choose one with --text-field")
        offset, rows = unit.start, ds[unit.start:unit.end][text_field]
    for i, value in enumerate(rows):
        where = f"{unit.path} (row {offset + i})"
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: column {text_field!r} is {type(value).__name__}, expected text")
        stats.bytes += len(value.encode("utf-8")) if value else 0
        yield f"{unit.key}@{offset + i}", value or ""


def _datasets() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never download anything
    from hsa_core.errors import require

    return require("datasets", what="reading a dataset saved with datasets.save_to_disk", extra="data")


def _dataset_parts(path: Path) -> list[tuple[str, int, int]]:
    """``(split name or '', rows, bytes)`` of a saved Dataset or DatasetDict."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable saved dataset ({exc})") from None
    size = sum(f.stat().st_size for f in path.rglob("*.arrow"))
    if hasattr(loaded, "keys"):  # DatasetDict: every split, in sorted order
        total = sum(len(loaded[k]) for k in loaded) or 1
        return [(k, len(loaded[k]), size * len(loaded[k]) // total) for k in sorted(loaded.keys())]
    return [("", len(loaded), size)]


def _load_dataset_split(path: Path, key: str) -> Any:
    datasets = _datasets()
    loaded = datasets.load_from_disk(str(path))
    if hasattr(loaded, "keys"):
        return loaded[key.split("/", 1)[1]]
    return loaded
