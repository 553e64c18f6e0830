"""Does retrieval find the key? Per retrieval module, how often the top-k chunks chosen at the answer
positions of passkey samples include a chunk that holds the key, beside exact match.

    python3 bench/passkey_hits.py RUN --filler text:DIR --lengths 4k,16k,64k --depths 0.1,0.5,0.9 --samples 16
    python3 bench/passkey_hits.py RUN --lengths 4k,64k --task-option key_len=4   # the synthetic passkey task

The samples are the ones ``hsa eval passkey`` scores (same task, options, seed and segment-wise prefill).
A chunk *holds the key* when it contains a token of an earlier occurrence of the answer's token
sequence (the needle; the text task writes the key twice). For each cell and retrieval module it reports
``hit``: the share of (sample, answer position, retrieval head) whose top-k includes such a chunk, and
``hit_any_head``: the share of (sample, answer position) where some head's does. A model that finds the
key but cannot copy it shows hits without exact matches; one that copies what it finds but cannot
find it shows exact match falling with the hit rate.

Beside them, ``key_weight``: the fusion weight the selection gives the key's chunks (summed over the
selected ones), averaged over (sample, answer position, head), and the same over the samples the model
answered right (``key_weight_right``) and wrong (``key_weight_wrong``, ``null`` when none). Per sample
(``per_sample``, and ``per_sample_exact`` for the answers) in the order of ``hsa eval passkey``'s
samples: with the same seed the indices of its ``missed`` list point into them. A miss with
the key found and weighted as in the right answers is a failure to read the chunk; one with the key
found but weighted less is the other selected chunks outweighing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor


def key_chunks(row: Tensor, key: Tensor, end: int, chunk_size: int) -> set[int]:
    """Chunks holding a token of any occurrence of ``key`` ``(A,)`` in ``row[:end]`` ``(T,)``."""
    n = key.numel()
    if n == 0 or end < n:
        return set()
    windows = row[:end].unfold(0, n, 1)  # (end - n + 1, n)
    starts = (windows == key).all(1).nonzero().flatten().tolist()
    return {p // chunk_size for s in starts for p in range(s, s + n)}


def key_slots(indices: Tensor, positions: Tensor, chunks: list[set[int]]) -> Tensor:
    """``(B, A, H_r, K)`` bool: which selected slots of ``indices`` ``(B, T, H_r, K)``, read at ``positions``
    ``(B, A)``, hold one of ``chunks[b]``, the key's chunks of sample ``b``."""
    sel = indices[torch.arange(positions.shape[0])[:, None], positions]  # (B, A, H_r, K)
    mask = torch.zeros(sel.shape, dtype=torch.bool)
    for b, wanted in enumerate(chunks):
        if wanted:
            mask[b] = torch.isin(sel[b], torch.tensor(sorted(wanted), dtype=sel.dtype))
    return mask


def _rates(found: Tensor) -> tuple[float, float]:
    return float(found.float().mean()), float(found.any(-1).float().mean())


def hit_rates(indices: Tensor, positions: Tensor, chunks: list[set[int]]) -> tuple[float, float]:
    """``(hit, hit_any_head)`` over all samples: whether the selection holds one of the key's chunks
    (:func:`key_slots`), per (sample, answer position, head) and per (sample, answer position)."""
    return _rates(key_slots(indices, positions, chunks).any(-1))


def key_weights(indices: Tensor, weights: Tensor, positions: Tensor, chunks: list[set[int]],
                slots: Tensor | None = None) -> Tensor:
    """The fusion weight on the key's chunks ``(B, A, H_r)``: selections ``indices`` and ``weights``
    ``(B, T, H_r, K)`` read at ``positions`` ``(B, A)``, ``chunks[b]`` the key's chunks of sample ``b``
    (``slots``: :func:`key_slots` of the same, when already computed)."""
    if slots is None:
        slots = key_slots(indices, positions, chunks)
    w = weights[torch.arange(positions.shape[0])[:, None], positions].float()  # (B, A, H_r, K)
    return (w * slots).sum(-1)


def _mean(values: Tensor) -> float | None:
    return round(float(values.mean()), 4) if values.numel() else None


def measure(model: torch.nn.Module, task, lengths: list[int], depths: list[float | None], *, samples: int,
            seed: int, segment_len: int, device: torch.device, autocast_dtype: torch.dtype | None) -> list[dict]:
    """One record per (length, depth): exact match, and per retrieval module ``hit`` and ``hit_any_head``."""
    from hsa_app.evaluation.core import cell_seed, predict_answers

    from hsa_core.modules import Retrieval, captured_selections

    chunk_size = {n: m.chunk_size for n, m in model.named_modules() if isinstance(m, Retrieval)}
    if not chunk_size:
        raise SystemExit("error: the model has no retrieval (HSA) module")
    rows = []
    for length in lengths:
        for di, depth in enumerate(depths):
            g = torch.Generator().manual_seed(cell_seed(seed, length, di))  # hsa eval's samples
            batch = task.sample(samples, length, g, depth=depth)
            with captured_selections(model) as captured, torch.no_grad():
                preds = predict_answers(model, batch, segment_len=segment_len, autocast_dtype=autocast_dtype,
                                        device=device)
            answers, pos = batch.answers(), batch.answer_positions
            right = (preds.cpu() == answers).all(1)  # (B,)
            record = {"length": length, "depth": depth, "samples": samples,
                      "exact_match": float(right.float().mean())}
            for name, parts in captured.items():
                # (B, T, H_r, K): the segments in order
                indices = torch.cat([p.indices for p in parts], 1).cpu()
                weights = torch.cat([p.weights for p in parts], 1).cpu()
                chunks = [key_chunks(batch.input_ids[b], answers[b], int(pos[b, 0]) + 1, chunk_size[name])
                          for b in range(batch.batch_size)]
                slots = key_slots(indices, pos, chunks)  # (B, A, H_r, K), read once for both figures
                found = slots.any(-1)
                kw = key_weights(indices, weights, pos, chunks, slots)
                hit, any_head = _rates(found)
                record[name] = {"hit": round(hit, 4), "hit_any_head": round(any_head, 4),
                                "key_weight": _mean(kw), "key_weight_right": _mean(kw[right]),
                                "key_weight_wrong": _mean(kw[~right]),
                                # sample by sample, in the cell's seeded order (hsa eval's `missed` indexes it)
                                "per_sample": {"hit": [round(float(v), 3) for v in found.float().mean((1, 2))],
                                               "key_weight": [round(float(v), 4) for v in kw.mean((1, 2))]}}
            record["per_sample_exact"] = right.int().tolist()
            rows.append(record)
            print(json.dumps(record), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run or model directory")
    p.add_argument("--filler", help="text:DIR: the passkey inside natural text (as hsa eval passkey --filler)")
    p.add_argument("--lengths", default="4k")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--segment-len", type=int, default=16384)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="also write the records to this JSON file")
    args = p.parse_args(argv)

    from hsa_app.evaluation.report import parse_lengths
    from hsa_app.evaluation.runner import eval_task_for
    from hsa_app.runtime.checkpoint import model_dir_of, write_text_atomic

    from hsa_core.devices import resolve_device
    from hsa_core.model import load_pretrained

    overrides = {}
    for item in args.task_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --task-option {item!r}: expected KEY=VALUE")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    device = resolve_device("auto")
    run = Path(args.run)
    model = load_pretrained(model_dir_of(run), device=device).eval()
    task, _ = eval_task_for(run, "passkey", model.spec, overrides, args.filler)
    lengths = parse_lengths(args.lengths)
    depths = [float(x) for x in args.depths.split(",")]
    rows = measure(model, task, lengths, depths, samples=args.samples, seed=args.seed,
                   segment_len=args.segment_len, device=device,
                   autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps({"run": str(run), "filler": args.filler, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
