"""Record the chunk selections a trained model makes, for the kernel benchmark.

The kernel table's selections are drawn at random (``uniform``: no two tokens share a K/V tile, the
worst case for every sparse kernel). What a trained model selects is what users run; this script
records it so that ``bench/bench_kernels.py --selection recorded:FILE`` times the kernels on it:

    python3 bench/record_selections.py RUN --data DIR --length 65536 --out sel.safetensors
    python3 bench/record_selections.py RUN --task passkey --length 65536 --out sel.safetensors

``RUN`` is a run or model directory. The input is the first validation document of a prepared data
folder (``hsa data prepare``) with at least ``--length`` tokens, or one sample of a synthetic task in
the model's vocabulary. The model reads it in segments of ``--segment-len`` tokens with its cache
carried, as ``hsa eval`` does, and a forward hook on every retrieval module collects its
``(T, H_r, K)`` chunk ids. The file holds one ``indices.<module>`` int32 tensor per retrieval module
(``-1`` = empty slot), the same module's weights (``weights.<module>``, fp32), and metadata: the run,
the input, the chunk size, top-k, and each module's *repeat rate*: the fraction of valid slots whose
chunk an earlier slot of the same 4-token block already chose (how much the token-block forward,
``schedule="block"``, can share: it loads each distinct chunk of a block once), and the distinct chunks
per block of 4, 16 and 64 tokens (the token-block forward runs each of them against all of a block's
rows). The same counts for a file recorded before:

    python3 bench/record_selections.py --stats sel.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor


def _by_block(indices: Tensor, block: int) -> Tensor | None:
    """``indices`` ``(T, H, K)`` as ``(T // block, H, block * K)``: each head's slots of ``block``
    consecutive tokens side by side (a partial last block left out); None when no block is whole."""
    T, H, K = indices.shape
    n = T // block * block
    if n == 0:
        return None
    return indices[:n].reshape(n // block, block, H, K).permute(0, 2, 1, 3).reshape(n // block, H, block * K)


def repeat_rate(indices: Tensor, block: int = 4) -> float:
    """Fraction of valid slots of ``indices`` ``(T, H, K)`` whose chunk an earlier slot of the same
    ``block`` consecutive tokens (same head) already chose."""
    x = _by_block(indices, block)
    if x is None:
        return 0.0
    valid = x >= 0
    # slot j repeats when some slot i < j of its block holds the same chunk
    same = (x[..., :, None] == x[..., None, :]) & valid[..., :, None] & valid[..., None, :]
    earlier = torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(-1)
    repeats = (same & earlier).any(-1)
    return float(repeats.sum()) / max(1, int(valid.sum()))


#: Token blocks whose distinct chunks the recording reports (the token-block forward's 4 tokens at
#: G=16, and larger blocks a sweep may try).
STAT_BLOCKS = (4, 16, 64)


def distinct_per_block(indices: Tensor, block: int) -> dict[str, float]:
    """Distinct valid chunks per ``block`` consecutive tokens of one head of ``indices`` ``(T, H, K)``
    (a partial last block is left out): ``{"mean": ..., "max": ...}``; both 0 when no block is whole."""
    x = _by_block(indices, block)
    if x is None:
        return {"mean": 0.0, "max": 0}
    x = x.sort(-1).values
    new = torch.ones_like(x, dtype=torch.bool)
    new[..., 1:] = x[..., 1:] != x[..., :-1]
    count = (new & (x >= 0)).sum(-1)  # (blocks, H)
    return {"mean": round(float(count.float().mean()), 2), "max": int(count.max())}


def selection_stats(tensors: dict[str, Tensor]) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]]]:
    """Per retrieval module (``indices.<module>`` entries): its repeat rate (4-token blocks), and
    :func:`distinct_per_block` for each of :data:`STAT_BLOCKS`, keyed by the block's token count."""
    indices = {k.removeprefix("indices."): v for k, v in tensors.items() if k.startswith("indices.")}
    rates = {m: round(repeat_rate(v), 4) for m, v in indices.items()}
    distinct = {m: {str(b): distinct_per_block(v, b) for b in STAT_BLOCKS} for m, v in indices.items()}
    return rates, distinct


def print_stats(path: Path) -> int:
    """``--stats``: the repeat rates and distinct chunks per block of a recorded file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        print(f"error: --stats {path}: {e}", file=sys.stderr)
        return 2
    if not any(k.startswith("indices.") for k in tensors):
        print(f"error: --stats {path}: no indices.<module> tensor (not a file of this script)", file=sys.stderr)
        return 2
    describe(*selection_stats(tensors))
    return 0


def describe(rates: dict[str, float], distinct: dict[str, dict[str, dict[str, float]]]) -> None:
    """Print each retrieval module's repeat rate and distinct chunks per block (:func:`selection_stats`)."""
    for module, rate in rates.items():
        cells = ", ".join(f"{b} tokens: {d['mean']} (max {d['max']})" for b, d in distinct[module].items())
        print(f"{module}: repeat rate (4-token blocks) {rate:.4f}; distinct chunks per block: {cells}")


def input_tokens(args: argparse.Namespace, vocab_size: int) -> tuple[Tensor, str]:
    """``(1, length)`` int64 token ids and a description of where they came from."""
    if args.data:
        from hsa_app.data import open_data

        data = open_data(args.data)
        part = data.split("validation")
        for i, n in enumerate(part.doc_lengths):
            if int(n) >= args.length:
                ids = torch.from_numpy(part.document(i)[: args.length].copy()).long()
                return ids[None], f"{args.data}: validation document {i} ({int(n):,} tokens), first {args.length:,}"
        raise SystemExit(f"error: {args.data}: no validation document has {args.length:,} tokens "
                         f"(the longest has {int(max(part.doc_lengths, default=0)):,})")
    from hsa_app.tasks import make_task

    task = make_task(args.task, vocab_size=vocab_size)
    batch = task.sample(1, args.length, args.seed)
    return batch.input_ids, f"task {args.task} (seed {args.seed}), {args.length:,} tokens"


def record(model: torch.nn.Module, ids: Tensor, segment_len: int,
           autocast_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Run ``ids`` ``(1, T)`` through ``model`` in segments; every retrieval module's selections, as
    ``indices.<module>`` ``(T, H_r, K)`` int32 and ``weights.<module>`` ``(T, H_r, K)`` fp32 in one dict."""
    from hsa_core.generation import prefill
    from hsa_core.modules import captured_selections

    with captured_selections(model) as captured:
        if not captured:
            raise SystemExit("error: the model has no retrieval (HSA) module: nothing to record")
        with torch.no_grad():  # hsa eval's segment-wise prefill: the selections are the ones evaluation sees
            prefill(model, ids, segment_len=segment_len, autocast_dtype=autocast_dtype)
    out: dict[str, Tensor] = {}
    for name, parts in captured.items():
        out[f"indices.{name}"] = torch.cat([p.indices[0] for p in parts]).contiguous()
        out[f"weights.{name}"] = torch.cat([p.weights[0] for p in parts]).contiguous()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a run or model directory")
    p.add_argument("--stats", metavar="FILE", help="print the counts of a recorded file instead of recording")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="a prepared data folder: its first validation document of >= --length tokens")
    src.add_argument("--task", help="a synthetic task (e.g. passkey) sampled at --length")
    p.add_argument("--length", type=int, default=65536)
    p.add_argument("--segment-len", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="the .safetensors file to write")
    args = p.parse_args(argv)
    if args.stats is not None:
        if args.run is not None or args.data is not None or args.task is not None or args.out is not None:
            p.error("--stats FILE takes no RUN, --data, --task or --out")
        return print_stats(Path(args.stats))
    if args.run is None or args.out is None or (args.data is None) == (args.task is None):
        p.error("recording needs RUN, --out and one of --data / --task")

    from hsa_app.runtime.checkpoint import model_dir_of
    from safetensors.torch import save_file

    from hsa_core.devices import resolve_device
    from hsa_core.model import load_pretrained
    from hsa_core.modules.retrieval import Retrieval

    device = resolve_device("auto")
    model = load_pretrained(model_dir_of(args.run), device=device).eval()
    ids, source = input_tokens(args, model.vocab_size)
    tensors = record(model, ids, args.segment_len, torch.bfloat16 if device.type == "cuda" else None)
    first = next(m for m in model.modules() if isinstance(m, Retrieval))
    rates, distinct = selection_stats(tensors)
    meta = {"run": str(args.run), "source": source, "length": str(ids.shape[1]),
            "chunk_size": str(first.chunk_size), "topk": str(first.topk), "repeat_rate": json.dumps(rates),
            "distinct_per_block": json.dumps(distinct)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    print(f"wrote {out}: {len(rates)} retrieval module(s), {ids.shape[1]:,} tokens ({source})")
    describe(rates, distinct)
    return 0


if __name__ == "__main__":
    sys.exit(main())
