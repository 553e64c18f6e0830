"""``hsa eval ppl RUN --data DIR --lengths 4k,16k,64k,256k,1m [--compare RUN...]``: perplexity by
token position over long validation documents, far beyond the training length.

Documents: the first ``docs`` validation documents of at least ``L = max(lengths)`` tokens (lengths
longer than every validation document are dropped, and said so). Each is read as ``EOS + document``
(how a document starts in training) and scored on its first ``L`` targets; every model sees the same
documents, so the curves are comparable. The model runs segment by segment through its cache
(recurrent states + incremental chunk memory + position), so activations never exceed one segment.

Buckets: the table's are ``[0, l1), [l1, l2), ...`` from ``--lengths``; the plot's (and the JSON's
``fine`` list) are powers of two, ``[0, 128), [128, 256), ... [2^k, L)``. Perplexity of a bucket is
``exp(mean NLL)`` over every document's tokens at those positions.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hsa_core.devices import autocast_context

from ..runtime.checkpoint import write_text_atomic
from .report import format_length


@dataclass
class Bucket:
    start: int
    end: int
    tokens: int
    nll: float

    @property
    def ppl(self) -> float:
        return math.exp(min(self.nll, 50.0)) if self.tokens else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ppl": self.ppl}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bucket:
        """The inverse of :meth:`to_dict` (``ppl`` is derived, not read)."""
        return cls(int(d["start"]), int(d["end"]), int(d["tokens"]), float(d["nll"]))


@dataclass
class PplCurve:
    """One model's perplexity by position."""

    run: str
    label: str
    buckets: list[Bucket]
    fine: list[Bucket]
    overall: Bucket
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "label": self.label, "buckets": [b.to_dict() for b in self.buckets],
                "fine": [b.to_dict() for b in self.fine], "overall": self.overall.to_dict(), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PplCurve:
        """One entry of ``eval_ppl.json``'s ``models`` list back as a curve (to plot runs evaluated apart)."""
        return cls(str(d["run"]), str(d["label"]), [Bucket.from_dict(b) for b in d["buckets"]],
                   [Bucket.from_dict(b) for b in d["fine"]], Bucket.from_dict(d["overall"]), dict(d.get("meta", {})))


def fine_edges(length: int, first: int = 128) -> list[int]:
    """``[0, 128, 256, ..., length]``: power-of-two bucket edges up to ``length``."""
    edges, e = [0], first
    while e < length:
        edges.append(e)
        e *= 2
    edges.append(length)
    return edges


def bucketize(nll_sum: np.ndarray, count: np.ndarray, edges: Sequence[int]) -> list[Bucket]:
    out = []
    for a, b in itertools.pairwise(edges):
        n = int(count[a:b].sum())
        out.append(Bucket(int(a), int(b), n, float(nll_sum[a:b].sum() / n) if n else float("nan")))
    return out


@torch.inference_mode()
def position_nll(model: nn.Module, docs: Sequence[np.ndarray], length: int, *, eos_id: int,
                 segment_len: int = 4096, max_batch_tokens: int = 1 << 17, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None,
                 on_segment: Callable[[int, int], None] | None = None,
                 offload: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and token count at every position ``0 .. length-1`` over ``docs``.

    Args:
        model: an :class:`~hsa_core.model.HSALanguageModel` (``forward_hidden``, ``lm_head``, ``init_cache``).
        docs: token arrays of at least ``length`` tokens each (read as ``[eos_id, *doc]``).
        max_batch_tokens: documents per forward = ``max(1, max_batch_tokens // length)``.
        on_segment: called with ``(tokens done, tokens total)`` after each segment.
        offload: the chunk memories' K/V in host memory (``None``: as the model's layout says).

    Returns:
        ``(nll_sum (length,) float64, count (length,) int64)``.
    """
    device = torch.device(device)
    nll_sum = np.zeros(length, dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    per = max(1, max_batch_tokens // length)
    total, done = len(docs) * length, 0
    was = model.training
    model.eval()
    try:
        for i in range(0, len(docs), per):
            group = docs[i:i + per]
            x = torch.from_numpy(np.stack([np.concatenate([[eos_id], d[:length]]) for d in group]).astype(np.int64))
            inputs, targets = x[:, :-1], x[:, 1:].to(device)  # inputs go to the device a segment at a time
            cache = None if offload is None else model.init_cache(len(group), offload=offload, reserve_tokens=length)
            for s in range(0, length, segment_len):
                e = min(length, s + segment_len)
                with autocast_context(device, autocast_dtype):
                    h, cache = model.forward_hidden(inputs[:, s:e].to(device), cache, return_cache=True)
                    for c in range(s, e, 2048):  # the LM head and an fp32 cross-entropy a slice at a time
                        lg = model.lm_head(h[:, c - s:min(e, c + 2048) - s]).float()  # never (B, L, V) at once
                        tg = targets[:, c:c + lg.shape[1]]
                        nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), reduction="none")
                        nll_sum[c:c + lg.shape[1]] += nll.view(tg.shape).sum(0).double().cpu().numpy()
                        count[c:c + lg.shape[1]] += tg.shape[0]
                del h  # not alive through the next segment's forward
                done += (e - s) * len(group)
                if on_segment is not None:
                    on_segment(done, total)
    finally:
        model.train(was)
    return nll_sum, count


def select_documents(doc_lengths: np.ndarray, lengths: Sequence[int], docs: int) -> tuple[list[int], list[int],
                                                                                        list[int]]:
    """``(document indices, lengths kept, lengths dropped)``: the first ``docs`` documents of at least
    the longest kept length (a length no document reaches is dropped)."""
    from ..data.errors import DataError

    lengths = sorted(set(lengths))
    longest = int(doc_lengths.max()) if doc_lengths.size else 0
    kept = [n for n in lengths if n <= longest]
    dropped = [n for n in lengths if n > longest]
    if not kept:
        raise DataError(f"no validation document has {format_length(lengths[0])} tokens (the longest has "
                        f"{longest:,}); use shorter --lengths or data with longer documents")
    L = kept[-1]
    chosen = [int(i) for i in np.nonzero(doc_lengths >= L)[0][:docs]]
    return chosen, kept, dropped


def run_ppl(runs: Sequence[str | Path], data_dir: str | Path, lengths: Sequence[int], *, docs: int = 8,
            segment_len: int = 4096, max_batch_tokens: int = 1 << 17, device: str = "auto", dtype: str = "auto",
            out: str | Path | None = None, split: str = "validation",
            on_progress: Callable[[str, int, int], None] | None = None,
            offload: bool | None = None) -> tuple[dict[str, Any], Path, Path]:
    """Evaluate every run in ``runs`` on the same documents; write ``eval_ppl.json`` and
    ``eval_ppl.png`` into ``out`` (default: the first run).

    Raises:
        DataError: data damaged, prepared with another tokenizer than a run's, or too short.
    """
    import json

    from hsa_core.model import load_pretrained

    from ..data.errors import DataError
    from ..data.shards import open_data
    from ..data.tokenizer import check_tokenizer_match
    from ..runtime.distributed import resolve_device
    from .runner import model_dir_of

    data = open_data(data_dir)
    for r in runs:
        check_tokenizer_match(Path(r), data)
    part = data.split(split)
    chosen, kept, dropped = select_documents(part.doc_lengths, lengths, docs)
    L = kept[-1]
    docs_tokens = [part.document(i) for i in chosen]
    dev = resolve_device(device)
    amp = torch.bfloat16 if (dtype == "bf16" or (dtype == "auto" and dev.type == "cuda")) else None
    edges = [0, *kept]
    curves: list[PplCurve] = []
    labels = _labels([Path(r) for r in runs])
    for r, label in zip(runs, labels):
        t0 = time.perf_counter()
        model = load_pretrained(model_dir_of(r), device=dev)
        vocab = int(model.spec["model"]["vocab_size"])
        if vocab < data.vocab_size:
            raise DataError(f"{r}: model.vocab_size {vocab:,} is smaller than the data's vocabulary "
                            f"{data.vocab_size:,}")
        cb = (lambda d, t, _l=label: on_progress(_l, d, t)) if on_progress else None
        offloaded = any(model.offloaded_memories(offload).values())
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        nll_sum, count = position_nll(model, docs_tokens, L, eos_id=data.eos_id, segment_len=segment_len,
                                      max_batch_tokens=max_batch_tokens, device=dev, autocast_dtype=amp,
                                      on_segment=cb, offload=offload)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        overall = Bucket(0, L, int(count.sum()), float(nll_sum.sum() / max(1, count.sum())))
        curves.append(PplCurve(str(r), label, bucketize(nll_sum, count, edges),
                               bucketize(nll_sum, count, fine_edges(L)), overall,
                               {"train_seq_len": _train_len(Path(r)), "seconds": round(time.perf_counter() - t0, 2),
                                "parameters": sum(p.numel() for p in model.parameters()), "offload": offloaded,
                                "gpu_peak_bytes": peak}))
        del model
    result = {"data": str(Path(data_dir).resolve()), "fingerprint": data.fingerprint, "split": split,
              "lengths": kept, "dropped_lengths": dropped, "documents": chosen,
              "document_lengths": [int(part.doc_lengths[i]) for i in chosen], "evaluated_length": L,
              "segment_len": segment_len, "device": str(dev), "dtype": "bf16" if amp else "fp32",
              "torch": torch.__version__, "models": [c.to_dict() for c in curves]}
    out_dir = Path(out) if out is not None else Path(runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / "eval_ppl.json"
    write_text_atomic(jpath, json.dumps(result, indent=2) + "\n")
    ppath = plot_ppl(curves, out_dir / "eval_ppl.png", L)
    return result, jpath, ppath


def _labels(runs: list[Path]) -> list[str]:
    names = [r.name if r.name != "model" else r.parent.name for r in runs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs)]


def _train_len(run: Path) -> int | None:
    import json

    for cand in (run / "train_config.json", run.parent / "train_config.json"):
        if cand.is_file():
            return json.loads(cand.read_text())["config"].get("seq_len")
    return None


def rich_ppl_table(result: dict[str, Any]):
    """Models (rows) x position buckets (columns) of perplexity."""
    from rich.table import Table

    table = Table(title=f"perplexity by position ({len(result['documents'])} validation documents of >= "
                        f"{format_length(result['evaluated_length'])} tokens)")
    table.add_column("model")
    first = result["models"][0]["buckets"]
    for b in first:
        table.add_column(f"{format_length(b['start'])}-{format_length(b['end'])}", justify="right")
    table.add_column("all", justify="right")
    for m in result["models"]:
        table.add_row(m["label"], *[f"{b['ppl']:.3f}" for b in m["buckets"]], f"{m['overall']['ppl']:.3f}")
    return table


def plot_ppl(curves: Sequence[PplCurve], path: Path, length: int) -> Path:
    """Perplexity (y) against token position (x, log2; each point at its bucket's end), one line per
    model; a dotted vertical line at each model's training length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, c in enumerate(curves):
        xs = [b.end for b in c.fine if b.tokens]
        ys = [b.ppl for b in c.fine if b.tokens]
        (line,) = ax.plot(xs, ys, marker="o", ms=3, label=c.label, color=f"C{i}")
        tl = c.meta.get("train_seq_len")
        if tl:
            ax.axvline(tl, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (end of bucket); dotted: training length")
    ax.set_ylabel("perplexity")
    ax.set_title(f"perplexity by position, documents of >= {format_length(length)} tokens", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .report import save_figure

    return save_figure(fig, path)
