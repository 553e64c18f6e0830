"""Merge the passkey JSON files of ``bench/offload/h200_run.sh`` into one table and heatmap (every
length from 4K to 64M, cells of the same length and depth from several runs pooled), and tabulate the
footprint and speed each run recorded (GPU peak, host memory of the offloaded K/V, prefill tokens/s)
and the decode latencies.

    python bench/offload/report.py OUT/passkey_*.json [--decode OUT/decode.json] --out OUT

Writes ``OUT/passkey.png`` and ``OUT/summary.md`` (and prints the summary).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hsa_app.evaluation.core import CellResult, EvalResult
from hsa_app.evaluation.report import format_length, heatmap


def merge(files: list[Path]) -> tuple[EvalResult, list[dict]]:
    """Pool the cells of the offloaded runs among ``files`` by (length, depth); also return one footprint
    row per (file, length), offloaded or not."""
    cells: dict[tuple[int, float | None], CellResult] = {}
    rows: list[dict] = []
    first = None
    for f in files:
        d = json.loads(f.read_text())
        first = first or d
        meta = d.get("meta", {})
        for c in d["cells"] if meta.get("offload") else ():
            key = (c["length"], c["depth"])
            c = CellResult(**{k: c[k] for k in ("length", "depth", "samples", "accuracy", "token_accuracy",
                                                "seconds")})
            old = cells.get(key)
            if old is not None:
                n = old.samples + c.samples
                c = CellResult(c.length, c.depth, n, (old.accuracy * old.samples + c.accuracy * c.samples) / n,
                               (old.token_accuracy * old.samples + c.token_accuracy * c.samples) / n,
                               old.seconds + c.seconds)
            cells[key] = c
        for length, fp in meta.get("footprint", {}).items():
            # where the landmarks lived (files written before HSA_OFFLOAD_LANDMARKS existed: on the GPU)
            landmarks = meta.get("offload_landmarks") or ("device" if meta.get("offload") else "-")
            rows.append({"file": f"{f.parent.name}/{f.name}", "length": int(length), "landmarks": landmarks,
                         "segment": meta.get("segment_len"), **fp})
    if first is None or not cells:
        raise SystemExit("error: no offloaded passkey results among the files given")
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells}, key=lambda x: -1 if x is None else x)
    for n in lengths:  # a grid needs every cell: an unmeasured one shows as 0 samples
        for dep in depths:
            cells.setdefault((n, dep), CellResult(n, dep, 0, 0.0, 0.0, 0.0))
    result = EvalResult(first["task"], first["task_options"], lengths, depths, list(cells.values()),
                        {"train_seq_len": first.get("meta", {}).get("train_seq_len")})
    return result, rows


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def summary(result: EvalResult, rows: list[dict], decode: dict | None) -> str:
    out = ["## Passkey, exact match % (samples per cell)", "",
           "| depth | " + " | ".join(format_length(n) for n in result.lengths) + " |",
           "|---|" + "---|" * len(result.lengths)]
    for dep in result.depths:
        cs = [result.cell(n, dep) for n in result.lengths]
        out.append(f"| {dep} | " + " | ".join(f"{c.accuracy * 100:.0f} ({c.samples})" if c.samples else "-"
                                               for c in cs) + " |")
    out += ["", "## Footprint and prefill speed (per file and length)", "",
            "| file | length | segment | offload | landmarks | GPU peak GiB | host GiB | prefill tokens/s | prefill s "
            "| gathered GiB | copying s | waiting s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["length"], r["file"])):
        g = r.get("gathers") or {}  # files written before the gather counters have none
        gathered = (f"{_gib(g['bytes'])} | {g['copy_seconds']:.1f} | {g['sync_seconds']:.1f}" if g.get("calls")
                    else "- | - | -")
        segment = format_length(r["segment"]) if r.get("segment") else "-"
        out.append(f"| {r['file']} | {format_length(r['length'])} | {segment} | {r['offload']} | {r['landmarks']} | "
                   f"{_gib(r['gpu_peak_bytes'])} | "
                   f"{_gib(r['host_bytes'])} | {r['prefill_tokens_per_s']:,.0f} | {r['prefill_seconds']:.1f} | "
                   f"{gathered} |")
    if decode:
        out += ["", f"## Decode latency, {decode['spec']} (random weights, batch 1, {decode['dtype']})", "",
                "| context | placement | ms/token (median) | p10 | p90 | x shortest | GPU peak GiB | host GiB |",
                "|---|---|---|---|---|---|---|---|"]
        for r in decode["rows"]:
            out.append(f"| {format_length(r['context'])} | {'offload' if r['offload'] else 'gpu'} | "
                       f"{r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | {r['vs_shortest']:.2f} | "
                       f"{_gib(r['gpu_peak_bytes'])} | {_gib(r['host_bytes'])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--decode", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result, rows = merge([f for f in args.files if f.is_file()])
    decode = json.loads(args.decode.read_text()) if args.decode and args.decode.is_file() else None
    args.out.mkdir(parents=True, exist_ok=True)
    heatmap(result, args.out / "passkey.png", title="passkey exact match (%), chunk memory offloaded"
            + (f", trained at {result.meta['train_seq_len']}" if result.meta.get("train_seq_len") else ""))
    text = summary(result, rows, decode)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
