"""The passkey inside natural text: the layout of a sample, its filler and its determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hsa_app.data import PrepareOptions, open_data, prepare
from hsa_app.data.errors import DataError
from hsa_app.data.passkey import TextPasskeyTask


@pytest.fixture
def task(tmp_path: Path, corpus: Path) -> TextPasskeyTask:
    prepare(PrepareOptions([str(corpus)], val_fraction=0.5), tmp_path / "data", progress=False)
    data = open_data(tmp_path / "data")
    return TextPasskeyTask(data.tokenizer(), data.split("validation"), digits=5, min_gap=32)


def test_the_filler_holds_no_eos_even_across_documents(task: TextPasskeyTask) -> None:
    """The validation split of the test corpus is 12 short documents, so a 4K sample crosses several;
    the only EOS of a sample is the one it starts with."""
    eos = task.tok.eos_id
    assert int((torch.from_numpy(task.split.read(0, task.split.num_tokens)) == eos).sum()) >= 10
    batch = task.sample(6, 4096, 0, depth=0.3)
    assert batch.input_ids.shape == (6, 4096)
    assert (batch.input_ids[:, 0] == eos).all() and (batch.input_ids[:, 1:] != eos).all()
    # the key is written twice in the needle and answered at the end
    for row, pos in zip(batch.input_ids, batch.answer_positions):
        key = row[pos + 1]
        windows = row[:-len(key)].unfold(0, len(key), 1)
        assert int((windows == key).all(1).sum()) == 2
    assert task.options["filler_eos"] == "left out"  # in every result's task_options
    again = task.sample(6, 4096, 0, depth=0.3)
    assert torch.equal(batch.input_ids, again.input_ids)  # deterministic from the seed


def test_a_split_of_nothing_but_eos_is_refused(task: TextPasskeyTask) -> None:
    eos = task.tok.eos_id

    class OnlyEos:
        name, num_tokens = "validation", 50

        def read(self, start: int, end: int):
            import numpy as np

            return np.full(end - start, eos, dtype=np.int64)

    bare = TextPasskeyTask(task.tok, OnlyEos(), digits=5)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"fewer than \d+ tokens of text besides EOS"):
        bare.sample(1, 512, 0)
