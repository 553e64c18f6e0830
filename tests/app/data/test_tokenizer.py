"""Tokenizers: round trips, BPE training determinism, the stored file and its fingerprint, dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hsa_app.data.errors import DataError
from hsa_app.data.tokenizer import (
    BpeSpec,
    ByteTokenizer,
    file_fingerprint,
    load_tokenizer,
    parse_tokenizer_spec,
    split_pieces,
    token_dtype,
    train_bpe,
)

TEXT = "Hello, wörld! 東京 ✓ tabs\tand\nnewlines\n\n  spaces  end"


def test_bytes_round_trip_and_file(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int64 and ids.max() < 256 and tok.eos_id == 256 and tok.vocab_size == 257
    assert tok.decode(ids.tolist()) == TEXT
    assert tok.decode([*ids.tolist(), tok.eos_id]) == TEXT  # EOS is not text
    path = tok.save(tmp_path)
    again = load_tokenizer(path)
    assert isinstance(again, ByteTokenizer) and file_fingerprint(path) == again.fingerprint


def test_bpe_round_trip_is_lossless_and_training_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    texts = [TEXT * 3, "the state the state the memory " * 50, "naïve café " * 20]
    a = train_bpe(texts, 300)
    b = train_bpe(texts, 300)
    assert a.to_json() == b.to_json()  # same texts, same order: the same tokenizer, byte for byte
    assert a.eos_id == 0 and a.vocab_size <= 300
    for t in texts:
        assert a.encode(t).size < len(t.encode())  # merges shorten the text it was trained on
    for t in [*texts, "unseen: Ωmega ∑ 🙂", ""]:
        assert a.decode(a.encode(t).tolist()) == t
    loaded = load_tokenizer(a.save(tmp_path))
    assert loaded.encode(TEXT).tolist() == a.encode(TEXT).tolist()
    assert file_fingerprint(tmp_path / "tokenizer.json") == a.fingerprint


def test_bpe_gives_each_digit_its_own_token_unless_told_to_merge_them() -> None:
    pytest.importorskip("tokenizers")
    texts = ["the pass key is 72555. Remember it. 72555 is the pass key. " * 40,
             "in 1970 and 2001 there were 64 cpus at 2555 MHz " * 40]
    split, merged = train_bpe(texts, 400), train_bpe(texts, 400, split_digits=False)
    for key in ("72555", "1970", "64"):
        pieces = [split.decode([int(i)]) for i in split.encode(" " + key)]
        assert "".join(pieces) == " " + key and [p for p in pieces if p.strip()] == list(key)
        assert len(merged.encode(" " + key)) < len(key) + 1  # GPT-2's BPE merges the digits it saw often
    assert split.decode(split.encode(texts[1]).tolist()) == texts[1]


def test_a_foreign_tokenizer_json_gets_an_eos(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    loaded = load_tokenizer(path)
    assert loaded.eos_id == 3 and loaded.vocab_size == 4  # <|endoftext|> appended
    assert loaded.encode("a b a").tolist() == [0, 1, 0]


def test_long_texts_are_encoded_in_pieces_cut_after_newlines() -> None:
    text = ("line of text\n" * 50_000) + "tail without newline"
    pieces = split_pieces(text, size=1000)
    assert "".join(pieces) == text and all(p.endswith("\n") for p in pieces[:-1]) and len(pieces) > 100


def test_specs_and_dtypes(tmp_path: Path) -> None:
    assert parse_tokenizer_spec("bytes") == ("bytes", None)
    assert parse_tokenizer_spec("bpe:32k") == ("bpe", BpeSpec(32000, split_digits=True))
    assert parse_tokenizer_spec("bpe:300:merge-digits") == ("bpe", BpeSpec(300, split_digits=False))
    with pytest.raises(DataError, match="unknown BPE option 'digits'; the one allowed is merge-digits") as e:
        parse_tokenizer_spec("bpe:300:digits")
    assert e.value.exit_code == 2
    with pytest.raises(DataError, match=r"not 'bytes', 'bpe:N' or an existing tokenizer\.json") as e:
        parse_tokenizer_spec(str(tmp_path / "missing.json"))
    assert e.value.exit_code == 2
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    with pytest.raises(DataError, match="uint16 holds ids below 65,536 but the tokenizer's vocabulary has 100,000"):
        token_dtype(100_000, "uint16")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
