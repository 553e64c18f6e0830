"""How alike are the token states inside a chunk? For each model, the mean pairwise cosine similarity
of the states of the tokens of one chunk: the embeddings, the residual stream after every layer, and
the chunk memories' keys and values (what the selection's landmarks and HSA's in-chunk attention are
built from).

    python3 bench/chunk_similarity.py swa-hsa.yaml runs/realtext/swa-hsa [--data DIR] [--seq-len 1024]
    python3 bench/chunk_similarity.py LAYOUT --set memories.mid.after_layer=0   # a variant at init

A memory built from states that are all nearly the same vector (cosine near 1) gives the selection
and HSA nothing to find a key by: at initialisation each sliding-window attention layer averages
almost uniformly over its window, and four of them put SWA+HSA's mid-stack memory at 0.96, where
the embeddings are at 0.02 and Mamba2's states at 0.05. Tokens: validation text of a prepared data folder
(``--data``), else random token ids. SPEC is a layout file, a preset name, or a run or model directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor


def chunk_cosine(x: Tensor, chunk_size: int) -> float:
    """Mean cosine similarity between different tokens of the same chunk: ``x`` ``(B, T, ...)`` (the
    trailing dims flattened; an incomplete last chunk is left out). NaN without a complete chunk."""
    B, T = x.shape[:2]
    n = T // chunk_size
    if n == 0 or chunk_size < 2:
        return float("nan")
    y = torch.nn.functional.normalize(x[:, :n * chunk_size].reshape(B * n, chunk_size, -1).double(), dim=-1)
    gram = y @ y.transpose(1, 2)  # (B*n, S, S); the diagonal is 1
    return float(((gram.sum((1, 2)) - chunk_size) / (chunk_size * (chunk_size - 1))).mean())


def load_model(spec: str, overrides: list[str]) -> torch.nn.Module:
    """A model from a layout file or preset (fresh initialisation, ``overrides`` applied) or a run or
    model directory (trained weights; ``overrides`` not allowed)."""
    from hsa_core import presets
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    path = Path(spec)
    if path.is_dir():
        if overrides:
            raise SystemExit(f"error: --set applies to layouts, not to the trained model in {spec}")
        from hsa_app.runtime.checkpoint import model_dir_of

        return HSALanguageModel.from_pretrained(model_dir_of(path))
    source = path if path.is_file() else presets.path(spec)
    return HSALanguageModel.from_spec(load_spec(source, overrides=overrides))


def token_ids(vocab_size: int, data: str | None, samples: int, seq_len: int, seed: int) -> Tensor:
    """``(samples, seq_len)`` ids: windows of the validation split of ``data`` at random offsets, or
    random ids below ``vocab_size``."""
    g = torch.Generator().manual_seed(seed)
    if data is None:
        return torch.randint(0, vocab_size, (samples, seq_len), generator=g)
    from hsa_app.data.shards import open_data

    split = open_data(data).split("validation")
    if split.num_tokens < seq_len:
        raise SystemExit(f"error: the validation split of {data} has {split.num_tokens} tokens, fewer than {seq_len}")
    starts = torch.randint(0, split.num_tokens - seq_len + 1, (samples,), generator=g).tolist()
    return torch.stack([torch.from_numpy(split.read(s, s + seq_len).astype("int64")) for s in starts])


@torch.no_grad()
def measure(model: torch.nn.Module, ids: Tensor) -> dict:
    """``{"layers": [embedding, after layer 1, ...], "memories": {name: {after_layer, k, v}}}`` of mean
    in-chunk cosines, each memory at its own chunk size (the residual stream at the first one's)."""
    model.eval()
    memories = model.layout.memories
    if not memories:
        raise SystemExit("error: the layout has no chunk memory")
    chunk = next(iter(memories.values())).chunk_size
    states = [model.embedding(ids)]
    hooks = [block.register_forward_hook(lambda _m, _a, out: states.append(out[0] if isinstance(out, tuple) else out))
             for block in model.layers]
    try:
        cache = model(ids, return_cache=True).cache
    finally:
        for h in hooks:
            h.remove()
    mems = {name: {"after_layer": m.after_layer,
                   "k": chunk_cosine(cache.memories[name].k, m.chunk_size),
                   "v": chunk_cosine(cache.memories[name].v, m.chunk_size)} for name, m in memories.items()}
    return {"chunk_size": chunk, "layers": [chunk_cosine(h, chunk) for h in states], "memories": mems}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", help="layout files, presets, or run/model directories")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="layout overrides (as hsa build --set), for layouts only")
    p.add_argument("--data", help="a prepared data folder: its validation text (default: random token ids)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    results = []
    for spec in args.specs:
        model = load_model(spec, args.overrides)
        ids = token_ids(model.layout.model.vocab_size, args.data, args.samples, args.seq_len, args.seed)
        r = {"spec": spec, **measure(model, ids)}
        results.append(r)
        layers = " ".join(f"{c:.2f}" for c in r["layers"])
        mems = "; ".join(f"memory {n} (after layer {m['after_layer']}): k {m['k']:.2f} v {m['v']:.2f}"
                         for n, m in r["memories"].items())
        print(f"{spec}: in-chunk cosine, embeddings then each layer: {layers}; {mems}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
