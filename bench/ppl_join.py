"""One perplexity-by-position table and plot for models that ``hsa eval ppl`` evaluated apart.

``hsa eval ppl RUN --compare RUN2 ...`` puts several models in one table and one plot; models evaluated
in separate calls (one after its own fine-tune, say) have one ``eval_ppl.json`` each. This joins them,
after checking that they scored the same documents of the same data (fingerprint, documents,
evaluated length and buckets), and writes the joined JSON and PNG:

    python3 bench/ppl_join.py run10/eval_ppl.json run10/swa-hsa/eval_ppl.json --out run10/eval_ppl_both
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: what two results must share to be drawn on one set of axes
SAME = ("fingerprint", "split", "documents", "evaluated_length", "lengths")


def join(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The first result with every result's models (in order). Raises ``ValueError`` naming the first
    field in which a result differs from the first one, or a label that two models share."""
    first = results[0]
    for name, r in zip(names[1:], results[1:]):
        for key in SAME:
            if r.get(key) != first.get(key):
                raise ValueError(f"{name}: '{key}' is {r.get(key)!r}, not {first.get(key)!r} as in {names[0]}: "
                                 "not the same documents, so the curves cannot be compared")
    models = [m for r in results for m in r["models"]]
    labels = [m["label"] for m in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two models share a label ({', '.join(labels)}); evaluate them with distinct run names")
    return {**first, "models": models}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="eval_ppl.json files of `hsa eval ppl`")
    ap.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.png")
    args = ap.parse_args(argv)

    from hsa_app.evaluation.perplexity import PplCurve, plot_ppl, rich_ppl_table
    from hsa_app.runtime.checkpoint import write_text_atomic
    from rich.console import Console

    try:
        results = [json.loads(p.read_text()) for p in args.results]
        joined = join(results, [str(p) for p in args.results])
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(joined, indent=1) + "\n")
    plot_ppl([PplCurve.from_dict(m) for m in joined["models"]], args.out.with_suffix(".png"),
             int(joined["evaluated_length"]))
    Console(width=200).print(rich_ppl_table(joined))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
