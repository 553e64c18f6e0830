"""Brute-force HSA written as loops over tokens, heads and chunks, straight from the spec (fp64)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def select_brute(q_r: Tensor, lmk: Tensor, topk: int, S: int, q_offset: int, weighting: str,
                 window: int | None = None) -> tuple[Tensor, Tensor]:
    """Spec sections 4-5, one (b, t, h) at a time. Returns int64 indices and weights (autograd-able)."""
    B, T, Hr, dr = q_r.shape
    C = lmk.shape[1]
    idx_out = torch.full((B, T, Hr, topk), -1, dtype=torch.long)
    w_rows = []
    for b in range(B):
        for t in range(T):
            p = q_offset + t
            for h in range(Hr):
                vis = [i for i in range(C) if (i + 1) * S <= p
                       and (window is None or (i + 1) * S <= p - window + S)]
                scores = {i: (q_r[b, t, h] * lmk[b, i, h]).sum() / math.sqrt(dr) for i in vis}
                kept = sorted(vis, key=lambda i: float(scores[i].detach()), reverse=True)[:topk]
                kept.sort(reverse=True)  # most recent first
                ws = []
                if weighting == "stick_breaking":
                    remain = torch.ones((), dtype=q_r.dtype)
                    for i in kept:
                        beta = torch.sigmoid(scores[i])
                        ws.append(beta * remain)
                        remain = remain * (1 - beta)
                elif kept:
                    z = torch.stack([scores[i] for i in kept])
                    ws = list(torch.softmax(z, 0))
                row = torch.zeros(topk, dtype=q_r.dtype)
                if ws:
                    row = torch.cat([torch.stack(ws), torch.zeros(topk - len(ws), dtype=q_r.dtype)])
                for j, i in enumerate(kept):
                    idx_out[b, t, h, j] = i
                w_rows.append(row)
    return idx_out, torch.stack(w_rows).view(B, T, Hr, topk)


def attention_brute(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, w: Tensor, S: int,
                    sink: bool = False) -> Tensor:
    """Spec section 6: for every token, query head and kept slot, softmax inside the chunk."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    rows = []
    for b in range(B):
        for t in range(T):
            for hq in range(HQ):
                h = hq // G
                acc = torch.zeros(D, dtype=q.dtype)
                for j in range(idx.shape[-1]):
                    c = int(idx[b, t, h, j])
                    if c < 0:
                        continue
                    kc, vc = k[b, c * S:(c + 1) * S, h], v[b, c * S:(c + 1) * S, h]
                    a = kc @ q[b, t, hq] / math.sqrt(D)
                    if sink:
                        a = torch.cat([a, torch.zeros(1, dtype=a.dtype)])
                        vc = torch.cat([vc, torch.zeros(1, D, dtype=vc.dtype)])
                    acc = acc + w[b, t, h, j] * (torch.softmax(a, 0) @ vc)
                rows.append(acc)
    return torch.stack(rows).view(B, T, HQ, D)
