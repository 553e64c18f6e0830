"""Which passkey samples a model misses, by what the samples hold: the key's tokenization, and the
misses two models share.

``hsa eval passkey --filler text:DIR`` writes each cell's missed sample indices (``missed``); its
samples are seeded per cell (``cell_seed``), so they can be drawn again here, exactly, from the same
data folder. For every model's JSON this prints the miss rate by *key split* (how many digits each
token of the key holds: ``2+3`` is a 5-digit key tokenized as a 2-digit then a 3-digit token), and
for two or more models how many misses they share against what independent misses would give, and,
where the JSON holds what the model read instead (``missed_answers``), which answer tokens were wrong
and what they were: a digit of the key from another position (the right digits, out of place), another
digit, or not a digit:

    python3 bench/passkey_misses.py A/eval_passkey_text.json B/eval_passkey_text.json \\
        --filler text:runs/realtext/data --out misses.json

The models must have been evaluated on the same data folder, seed and task options (checked).
Run 9 (bench/results/h200_realtext/README.md) found with it that keys split 1+4 were missed about
70% of the time by both HSA models, against 2-8% for the other splits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


def key_split(tokenizer: Any, key_ids: list[int]) -> str:
    """``"2+3"``: the digits in each token of the key (tokens with no digit, a lone space, are left out)."""
    counts = [sum(c.isdigit() for c in tokenizer.decode([i])) for i in key_ids]
    return "+".join(str(c) for c in counts if c)


def cell_keys(task: Any, length: int, depth: float, depth_index: int, samples: int, seed: int) -> list[list[int]]:
    """The answer tokens (the key) of each of a cell's ``samples`` samples, drawn as ``hsa eval passkey``
    draws them."""
    from hsa_app.evaluation.core import cell_seed

    g = torch.Generator().manual_seed(cell_seed(seed, length, depth_index))
    return task.sample(samples, length, g, depth=depth).answers().tolist()


def wrong_tokens(tokenizer: Any, key_ids: list[int], got_ids: list[int]) -> list[tuple[int, str]]:
    """``(position, kind)`` for every answer token that differs from the key's: ``kind`` is
    ``"key digit, other position"`` when the token read is one of the key's other tokens and holds a
    digit, ``"other digit"`` when it holds a digit not of the key, ``"not a digit"`` otherwise."""
    out = []
    for pos, (want, got) in enumerate(zip(key_ids, got_ids)):
        if want == got:
            continue
        if not any(c.isdigit() for c in tokenizer.decode([got])):
            out.append((pos, "not a digit"))
        elif got in key_ids:
            out.append((pos, "key digit, other position"))
        else:
            out.append((pos, "other digit"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="eval_passkey_text.json files of `hsa eval passkey`")
    ap.add_argument("--filler", required=True, help="text:DIR, the data folder the models were evaluated on")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = ap.parse_args(argv)

    from hsa_app.data.passkey import TextPasskeyTask
    from hsa_app.data.shards import open_data

    runs = [json.loads(p.read_text()) for p in args.results]
    first = runs[0]
    for path, run in zip(args.results, runs):
        same = (run["task_options"] == first["task_options"] and run["meta"]["seed"] == first["meta"]["seed"]
                and [(c["length"], c["depth"], c["samples"]) for c in run["cells"]]
                == [(c["length"], c["depth"], c["samples"]) for c in first["cells"]])
        if not same:
            print(f"error: {path}: other task options, seed or cells than {args.results[0]}", file=sys.stderr)
            return 2
    if not args.filler.startswith("text:"):
        print(f"error: --filler {args.filler!r}: expected text:DIR", file=sys.stderr)
        return 2
    data = open_data(args.filler[5:])
    tok = data.tokenizer()
    opts = first["task_options"]
    task = TextPasskeyTask(tok, data.split(opts.get("split", "validation")), digits=int(opts["digits"]),
                           min_gap=int(opts["min_gap"]), seed=int(opts["seed"]), source=str(data.root))
    seed = int(first["meta"]["seed"])

    by_split: list[dict[str, list[int]]] = [defaultdict(lambda: [0, 0]) for _ in runs]  # split -> [samples, missed]
    # (answer position, kind) -> wrong tokens, per model with missed_answers
    wrong: list[dict[tuple[int, str], int] | None] = [
        defaultdict(int) if all("missed_answers" in c for c in run["cells"]) else None for run in runs]
    shared = expected = 0.0
    for ci, cell in enumerate(first["cells"]):
        keys = cell_keys(task, cell["length"], cell["depth"], first["depths"].index(cell["depth"]),
                         cell["samples"], seed)
        splits = [key_split(tok, k) for k in keys]
        for r, run in enumerate(runs):
            if wrong[r] is not None:
                for i, got in zip(run["cells"][ci]["missed"], run["cells"][ci]["missed_answers"]):
                    for pos_kind in wrong_tokens(tok, keys[i], got):
                        wrong[r][pos_kind] += 1
        missed = [set(run["cells"][ci]["missed"]) for run in runs]
        for r, m in enumerate(missed):
            for i, s in enumerate(splits):
                by_split[r][s][0] += 1
                by_split[r][s][1] += i in m
        if len(runs) >= 2:
            shared += len(set.intersection(*missed))
            p = 1.0
            for m in missed:
                p *= len(m) / cell["samples"]
            expected += p * cell["samples"]

    names = [p.parent.name + "/" + p.name for p in args.results]
    splits = sorted({s for b in by_split for s in b})
    print("| key split | samples | " + " | ".join(f"missed: {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for s in splits:
        n = by_split[0][s][0]
        print(f"| {s} | {n} | " + " | ".join(f"{b[s][1]} ({100 * b[s][1] / n:.1f}%)" for b in by_split) + " |")
    out: dict[str, Any] = {"results": [str(p) for p in args.results], "filler": args.filler,
                           "by_split": {s: {"samples": by_split[0][s][0], "missed": [b[s][1] for b in by_split]}
                                        for s in splits}}
    for name, w in zip(names, wrong):
        if w is None:
            continue
        kinds = sorted({k for _, k in w})
        print(f"\n{name}: wrong answer tokens by position (0: the token after the question) and by what was read")
        print("| position | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for pos in sorted({p for p, _ in w}):
            print(f"| {pos} | " + " | ".join(str(w.get((pos, k), 0)) for k in kinds) + " |")
        out.setdefault("wrong_tokens", {})[name] = [{"position": p, "kind": k, "count": n}
                                                   for (p, k), n in sorted(w.items())]
    if len(runs) >= 2:
        print(f"\nmisses all {len(runs)} models share: {shared:.0f}; expected if they missed independently: "
              f"{expected:.1f}")
        out["shared_misses"], out["expected_if_independent"] = int(shared), round(expected, 2)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
