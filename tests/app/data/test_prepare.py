"""``hsa data prepare`` as a library: inputs of every kind, the split, determinism across worker
counts, resuming after an interruption, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hsa_app.data import PrepareOptions, open_data, prepare
from hsa_app.data import sources as sources_mod
from hsa_app.data.errors import DataError
from hsa_app.data.prepare import choose_validation

from tests.optional_deps import skip_unless_required


def _texts(out: Path) -> list[str]:
    """Every document of both splits, decoded (EOS dropped), sorted."""
    data = open_data(out)
    tok = data.tokenizer()
    docs = []
    for name in ("train", "validation"):
        split = data.split(name)
        for i in range(split.num_docs):
            d = split.document(i)
            assert d[-1] == tok.eos_id and (d[:-1] != tok.eos_id).all()
            docs.append(tok.decode(d[:-1].tolist()))
    return sorted(docs)


def test_folder_of_text_files_round_trips(tmp_path: Path, corpus: Path) -> None:
    res = prepare(PrepareOptions([str(corpus)], val_fraction=0.25), tmp_path / "out", progress=False)
    m = res.manifest
    originals = sorted(p.read_text(encoding="utf-8") for p in corpus.rglob("*.txt"))
    assert _texts(tmp_path / "out") == originals
    assert m["dtype"] == "uint16" and m["tokenizer"]["kind"] == "bytes" and m["inputs"]["documents"] == 24
    assert m["splits"]["validation"]["documents"] == 6 and m["splits"]["train"]["documents"] == 18
    total = sum(len(t.encode()) + 1 for t in originals)
    assert m["splits"]["train"]["tokens"] + m["splits"]["validation"]["tokens"] == total
    assert not (tmp_path / "out" / ".work").exists()
    # a second identical call does nothing; other options are refused without --force
    again = prepare(PrepareOptions([str(corpus)], val_fraction=0.25), tmp_path / "out", progress=False)
    assert again.already_done and again.manifest["fingerprint"] == m["fingerprint"]
    with pytest.raises(DataError, match="already holds data prepared with other options; pass --force") as e:
        prepare(PrepareOptions([str(corpus)], val_fraction=0.5), tmp_path / "out", progress=False)
    assert e.value.exit_code == 2
    forced = prepare(PrepareOptions([str(corpus)], val_fraction=0.5), tmp_path / "out", progress=False, force=True)
    assert forced.manifest["splits"]["validation"]["documents"] == 12


def test_split_is_stratified_by_length() -> None:
    lengths = list(range(100, 0, -1))
    keys = [f"d{i}" for i in range(100)]
    val = choose_validation(lengths, keys, 0.1)
    assert val.sum() == 10 and val[5] and val[15] and val[95] and not val[0]  # the middle of every 10
    assert choose_validation([5, 3], ["a", "b"], 0.01).tolist() == [False, True]  # at least one when possible
    assert choose_validation([9, 8, 7, 6], list("abcd"), 0.25).tolist() == [False, False, True, False]
    assert choose_validation([5], ["a"], 0.5).sum() == 0 and choose_validation(lengths, keys, 0.0).sum() == 0


def test_output_is_the_same_for_any_worker_count_and_after_an_interruption(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tokenizers")
    monkeypatch.setattr(sources_mod, "TEXT_GROUP_FILES", 4)  # 6 units of 4 files
    opts = PrepareOptions([str(corpus)], tokenizer="bpe:320", val_fraction=0.2)
    one = prepare(opts, tmp_path / "one", workers=1, progress=False).manifest
    two = prepare(opts, tmp_path / "two", workers=2, progress=False).manifest
    assert one["inputs"]["units"] == 6
    assert one["fingerprint"] == two["fingerprint"] and one["splits"] == two["splits"]
    with pytest.raises(KeyboardInterrupt):
        prepare(opts, tmp_path / "cut", workers=1, progress=False, _stop_after_units=2)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(DataError, match=r"no manifest.json; not a prepared data folder \(an interrupted prepare"):
        open_data(tmp_path / "cut")
    resumed = prepare(opts, tmp_path / "cut", workers=2, progress=False)
    assert resumed.resumed_units == 2 and resumed.manifest["fingerprint"] == one["fingerprint"]
    # the same folder with other inputs is refused while an interrupted prepare is in it
    with pytest.raises(KeyboardInterrupt):
        prepare(opts, tmp_path / "cut2", workers=1, progress=False, _stop_after_units=1)
    with pytest.raises(DataError, match="holds an interrupted prepare of other inputs or options"):
        prepare(PrepareOptions([str(corpus / "a")], tokenizer="bpe:320"), tmp_path / "cut2", progress=False)


def test_jsonl_inputs_with_byte_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"text": f"row {i} " + "x" * (i % 7), "id": i} for i in range(200)] + [{"text": ""}, {"text": None}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    monkeypatch.setattr(sources_mod, "JSONL_RANGE_BYTES", 500)  # many ranges: no row lost or doubled
    res = prepare(PrepareOptions([str(path)], val_fraction=0.1), tmp_path / "out", progress=False)
    assert res.manifest["inputs"]["units"] > 5 and res.manifest["inputs"]["empty"] == 2
    assert _texts(tmp_path / "out") == sorted(r["text"] for r in rows[:200])


def test_parquet_arrow_and_saved_datasets(tmp_path: Path) -> None:
    try:
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        skip_unless_required("datasets/pyarrow (the data extra) not installed")
    texts = [f"parquet document {i}: " + "abc " * i for i in range(30)]
    pq.write_table(pa.table({"content": texts}), tmp_path / "a.parquet", row_group_size=7)
    schema = pa.schema([("content", pa.string())])
    with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        w.write_table(pa.table({"content": ["arrow one", "arrow two"]}))
    datasets.Dataset.from_dict({"content": ["saved one", "saved two", "saved three"]}).save_to_disk(tmp_path / "ds")
    inputs = [str(tmp_path / "a.parquet"), str(tmp_path / "b.arrow"), str(tmp_path / "ds")]
    res = prepare(PrepareOptions(inputs, text_field="content"), tmp_path / "out", progress=False)
    assert res.manifest["inputs"]["units"] == 5 + 1 + 1
    assert _texts(tmp_path / "out") == sorted([*texts, "arrow one", "arrow two", "saved one", "saved two",
                                               "saved three"])
    with pytest.raises(DataError, match=r"a.parquet: no column 'text' \(columns: content\)"):
        prepare(PrepareOptions(inputs[:1]), tmp_path / "out2", progress=False)


@pytest.mark.parametrize("case", ["missing", "empty_folder", "only_empty", "non_utf8", "jsonl_line", "jsonl_field"])
def test_bad_input_is_one_clear_error(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    code, match = 1, ""
    if case == "missing":
        target, code, match = tmp_path / "nope", 2, "nope: no such file or directory"
    elif case == "empty_folder":
        target, match = src, "the folder holds no files"
    elif case == "only_empty":
        (src / "a.txt").write_text("")
        (src / "b.bin").write_bytes(b"\0\1\2binary")
        target, match = src, r"no text found in .* \(skipped: 1 empty, 1 binary\)"
    elif case == "non_utf8":
        (src / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
        target, match = src, r"latin1.txt: not valid UTF-8 \(byte 3: b'\\xe9 au'\); .* --skip-invalid"
    elif case == "jsonl_line":
        (src / "x.jsonl").write_text('{"text": "ok"}\n{broken\n')
        target, match = src / "x.jsonl", r"x.jsonl \(byte 15\): not a JSON line"
    else:
        (src / "x.jsonl").write_text('{"body": "ok"}\n')
        target = src / "x.jsonl"
        match = r"x.jsonl \(byte 0\): no field 'text' \(has: body\); choose one with --text-field"
    with pytest.raises(DataError, match=match) as e:
        prepare(PrepareOptions([str(target)]), tmp_path / "out", progress=False)
    assert e.value.exit_code == code and "\n" not in str(e.value)


def test_skip_invalid_counts_what_it_leaves_out(tmp_path: Path, corpus: Path) -> None:
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    res = prepare(PrepareOptions([str(corpus)], skip_invalid=True), tmp_path / "out", progress=False)
    assert res.manifest["inputs"]["invalid_utf8"] == 1 and res.manifest["inputs"]["documents"] == 24


def test_uint32_when_asked_and_index_offsets(tmp_path: Path, corpus: Path) -> None:
    res = prepare(PrepareOptions([str(corpus)], dtype="uint32", shard_tokens=1000), tmp_path / "out", progress=False)
    train = res.manifest["splits"]["train"]
    assert res.manifest["dtype"] == "uint32" and len(train["shards"]) > 3
    data = open_data(tmp_path / "out")
    split = data.split("train")
    assert split.read(990, 1010).size == 20  # across a shard boundary
    offsets = np.load(tmp_path / "out" / "train" / "docs.npy")
    assert offsets[-1] == train["tokens"] and (split.read(0, split.num_tokens)[offsets[1:] - 1] == 256).all()


def test_text_works_without_the_data_extra_and_its_absence_is_named(tmp_path: Path, corpus: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from hsa_core.errors import MissingDependencyError

    for name in ("tokenizers", "datasets", "pyarrow"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "one"}\n{"text": "two"}\n')
    res = prepare(PrepareOptions([str(corpus), str(rows)]), tmp_path / "out", progress=False)
    assert res.manifest["inputs"]["documents"] == 26
    with pytest.raises(MissingDependencyError, match=r"pip install 'hsa-toolkit\[data\]'"):
        prepare(PrepareOptions([str(corpus)], tokenizer="bpe:300"), tmp_path / "o2", progress=False)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingDependencyError, match=r"pip install 'hsa-toolkit\[data\]'"):
        prepare(PrepareOptions([str(tmp_path / "x.parquet")]), tmp_path / "o3", progress=False)
