"""Streaming generation: segment-wise prefill + token-by-token decoding gives the model's own greedy
continuation; sampling is reproducible; text streams without splitting a character."""

from __future__ import annotations

from pathlib import Path

import torch
from hsa_app.data.tokenizer import ByteTokenizer

from hsa_core.generation import TextStream, pick_token, prefill, stream_generate

TINY = Path(__file__).parents[1] / "app" / "training" / "tiny.yaml"


def _model():
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    torch.manual_seed(0)
    return HSALanguageModel.from_spec(load_spec(TINY)).eval()


def test_greedy_stream_equals_generate_and_prefill_is_segmented() -> None:
    torch.set_num_threads(1)
    model = _model()
    prompt = torch.randint(1, 96, (1, 45), generator=torch.Generator().manual_seed(1))
    ref = model.generate(prompt, 12)[0, 45:].tolist()
    got = list(stream_generate(model, prompt[0].tolist(), max_new_tokens=12, temperature=0.0, segment_len=8))
    assert got == ref
    last_seg, _ = prefill(model, prompt, segment_len=7)
    with torch.no_grad():
        last_full = model(prompt).logits[:, -1]
    assert torch.allclose(last_seg, last_full, atol=1e-4)
    # stops after EOS
    eos = ref[3]
    assert list(stream_generate(model, prompt[0].tolist(), max_new_tokens=12, eos_id=eos))[-1] == eos


def test_sampling_is_reproducible_and_respects_top_k() -> None:
    model = _model()
    a = list(stream_generate(model, [1, 2, 3], max_new_tokens=10, temperature=1.0, seed=5))
    b = list(stream_generate(model, [1, 2, 3], max_new_tokens=10, temperature=1.0, seed=5))
    assert a == b
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(pick_token(logits, temperature=1.0, top_k=2, generator=g)) for _ in range(50)}
    assert picks <= {1, 2} and len(picks) == 2
    assert {int(pick_token(logits, temperature=1.0, top_p=0.5, generator=g)) for _ in range(20)} == {1}


def test_text_stream_never_splits_a_character() -> None:
    tok = ByteTokenizer()
    text = "naïve 東京 ✓"
    stream = TextStream(tok)
    pieces = [stream.push(int(i)) for i in tok.encode(text)]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_prefill_reports_each_segment() -> None:
    model = _model()
    calls: list[tuple[int, int]] = []
    prefill(model, torch.randint(0, 32, (1, 70)), segment_len=32, on_segment=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(32, 70), (64, 70), (70, 70)]
