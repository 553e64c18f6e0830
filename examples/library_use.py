"""hsa-toolkit as a library, in one page: run ``python examples/library_use.py`` (CPU, seconds).

1. build a model from a YAML layout (with an override, as ``hsa build --set`` does);
2. run a forward pass;
3. call the functional ops ``hsa_select`` / ``hsa_attention`` directly;
4. generate, and check that incremental decoding agrees with the full forward pass;
5. save the model to a directory and load it back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from hsa_core import hsa_attention, hsa_select
from hsa_core.layout import load_spec
from hsa_core.model import HSALanguageModel
from hsa_core.summary import describe

HERE = Path(__file__).resolve().parent


def build_from_yaml() -> HSALanguageModel:
    """1. YAML -> canonical spec -> model (``--set``-style overrides are plain strings)."""
    spec = load_spec(HERE / "ramba-cpu.yaml", overrides=["model.vocab_size=256"])
    model = HSALanguageModel.from_spec(spec).eval()
    print(describe(model, context_len=1024).format_table())
    return model


def functional_ops() -> None:
    """3. The two ops on their own: choose top-k chunks per token, then attend inside them."""
    B, T, S, topk = 2, 50, 8, 3             # T is not a multiple of S on purpose
    HQ, H, D, d_r = 4, 1, 16, 32            # 4 query heads share 1 KV head (G = 4)
    C = T // S                              # complete chunks
    q_r = torch.randn(B, T, H, d_r)         # retrieval queries (one retrieval head per KV head)
    landmarks = torch.randn(B, C, H, d_r)   # one summary per chunk
    indices, weights = hsa_select(q_r, landmarks, topk=topk, chunk_size=S, weighting="stick_breaking")
    # Tokens of the first chunk see no complete chunk: all slots empty (-1), weights 0.
    assert bool((indices[:, :S] == -1).all()) and float(weights[:, :S].abs().sum()) == 0.0
    q = torch.randn(B, T, HQ, D)
    k, v = torch.randn(B, C * S, H, D), torch.randn(B, C * S, H, D)
    out = hsa_attention(q, k, v, indices, weights, chunk_size=S)
    print(f"hsa_select -> indices {tuple(indices.shape)}, hsa_attention -> {tuple(out.shape)}; "
          f"token {T - 1} reads chunks {indices[0, -1, 0].tolist()} with weights "
          f"{[round(w, 3) for w in weights[0, -1, 0].tolist()]}")


def main() -> None:
    torch.manual_seed(0)
    model = build_from_yaml()

    # 2. Forward pass.
    ids = torch.randint(0, 256, (2, 70))
    with torch.no_grad():
        logits = model(ids).logits
    print(f"forward: {tuple(ids.shape)} -> logits {tuple(logits.shape)}")

    functional_ops()

    # 4. Generation (greedy here; do_sample=True, temperature=..., top_k=... sample) and the
    #    incremental-vs-full check: the logits each new token was chosen from must equal the
    #    full forward pass's logits at the same positions.
    generated, step_logits = model.generate(ids, max_new_tokens=8, return_logits=True)
    with torch.no_grad():
        full = model(generated).logits[:, ids.shape[1] - 1:-1]
    diff = float((full - step_logits).abs().max())
    print(f"generate: {tuple(generated.shape)}; max |incremental - full| logit = {diff:.2e}")
    assert diff < 1e-3, diff

    # 5. Save and load: config.yaml + config.json + model.safetensors.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "ramba-cpu")
        loaded = HSALanguageModel.from_pretrained(Path(tmp) / "ramba-cpu").eval()
        with torch.no_grad():
            same = torch.equal(loaded(ids).logits, logits)
    print(f"save/load: identical logits after reload: {same}")
    assert same


if __name__ == "__main__":
    main()
