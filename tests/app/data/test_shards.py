"""Reading prepared data: every kind of damage is a one-line DataError naming the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hsa_app.data import PrepareOptions, open_data, prepare
from hsa_app.data.errors import DataError


@pytest.fixture
def prepared(tmp_path: Path, corpus: Path) -> Path:
    prepare(PrepareOptions([str(corpus)], val_fraction=0.2), tmp_path / "data", progress=False)
    return tmp_path / "data"


def _shard(root: Path) -> Path:
    return root / "train" / "tokens_00000.bin"


def _truncate(root: Path) -> None:
    data = _shard(root).read_bytes()
    _shard(root).write_bytes(data[:-10])


def _flip(root: Path) -> None:
    data = bytearray(_shard(root).read_bytes())
    data[100] ^= 0x01
    _shard(root).write_bytes(bytes(data))


def _manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        m = json.loads((root / "manifest.json").read_text())
        edit(m)
        (root / "manifest.json").write_text(json.dumps(m))
    return apply


def _set_vocab(m: dict) -> None:
    m["tokenizer"]["vocab_size"] = 70_000


def _drop_shards(m: dict) -> None:
    del m["splits"]["train"]["shards"]


DAMAGE = {
    "truncated": (_truncate, r"tokens_00000.bin: [\d,]+ bytes, the manifest says [\d,]+ \(truncated or corrupted"),
    "flipped": (_flip, r"tokens_00000.bin: SHA-256 differs from the manifest's \(corrupted shard\)"),
    "garbage_manifest": (lambda r: (r / "manifest.json").write_text("{oops"), r"manifest.json: not valid JSON"),
    "vocab_too_large": (_manifest(_set_vocab), r"vocabulary \(70,000 ids\) does not fit the token dtype uint16"),
    "incomplete_manifest": (_manifest(_drop_shards), r"incomplete manifest \(missing 'shards'\)"),
    "other_tokenizer": (lambda r: (r / "tokenizer.json").write_text('{"hsa_tokenizer": "bytes", "version": 2}'),
                        r"tokenizer.json: differs from the tokenizer the data was prepared with"),
    "index": (lambda r: np.save(r / "train" / "docs.npy", np.array([0, 5])), r"docs.npy: SHA-256 differs"),
    "missing_shard": (lambda r: _shard(r).unlink(), r"tokens_00000.bin: shard missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_data_is_refused_with_one_line(prepared: Path, case: str) -> None:
    damage, match = DAMAGE[case]
    damage(prepared)
    with pytest.raises(DataError, match=match) as e:
        open_data(prepared).split("train")
    assert e.value.exit_code == 1 and "\n" not in str(e.value)


def test_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data folder") as e:
        open_data(tmp_path / "nope")
    assert e.value.exit_code == 2


def test_without_checksums_an_out_of_vocabulary_id_is_still_caught(prepared: Path) -> None:
    data = bytearray(_shard(prepared).read_bytes())
    data[200:202] = (60_000).to_bytes(2, "little")
    _shard(prepared).write_bytes(bytes(data))
    split = open_data(prepared, verify=False).split("train")  # sizes are fine, the hash is not checked
    with pytest.raises(DataError, match=r"train: token id 60000 in \[0, 400\) is outside the vocabulary \(257\)"):
        split.read(0, 400)
