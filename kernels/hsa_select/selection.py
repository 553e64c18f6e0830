"""Fused HSA selection: the Triton kernel, its launch settings, the autograd function and the entry point.

The kernel computes scores against the landmarks, the causal rule (+ window), a running top-k, the sort
by recency and the fusion weights, in one pass over the landmarks. Memory O(T * k): the T x C score
matrix never exists.

Layouts: q_r (B, T, Hr, dr); landmarks (B, C, Hr, dr); outputs idx int32 / w fp32 / s fp32 (B, T, Hr, K).

One program = BLOCK_T tokens of one (b, hr). For each block of BLOCK_C visible landmarks it computes the
(BLOCK_T, BLOCK_C) score tile with tl.dot, packs scores with ids into int64 keys (order-preserving
integer image of the fp32 score in the high word, the id in the low word) and merges them into a running
top-KP with tl.topk. Packing keeps the exact fp32 score, so weights need no second pass.

The top-k merge, not the matmul, bounds a long scan, so by default the scan screens by *groups* of
``SelectLaunch.group`` consecutive chunks: one key per group (its best score, its first chunk id), a
merge BLOCK_C / group keys wide. A token's top-k chunks lie in its top-KP groups (a group ranks above
one holding a top-k chunk only by holding a chunk that outranks that one, and there are at most k - 1
such), so a second kernel (``_hsa_rescore_kernel``) scores the KP * group chunks of those groups and
keeps the top-k: the same selection. (The two kernels sum the same fp32 products in different orders,
so chunks whose scores lie within that rounding of each other may be ranked differently than by the
per-chunk scan, as by any two fp32 evaluations; equal landmarks score equally in both.)

Deep into a long context most tiles cannot change a token's top-k; ``skip_merges`` scans newest first
and skips their merges after one comparison. On the H200 the three together take a 16K-token segment
at a 64M context from 186 ms to 31-48 ms (``bench/results/h200/select_long.txt``).

Backward: top-k has no gradient; the weights' gradient goes to the kept scores through the fusion
formula (recomputed in torch on the (B,T,Hr,K) scores the kernel saved), then to q_r and the landmarks
through the kept landmarks only (gather / index_add), so memory stays O(T * K * dr / blocks). Gumbel
noise (training-time exploration) runs the naive selection (``naive.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..arch import check_counts, row_for
from .naive import fusion_weights, hsa_select_naive


@triton.jit
def _sortable(x):
    """fp32 -> int32 whose signed order is the float order (non-NaN)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _unsortable(k):
    bits = k ^ ((k >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _visible_rows(offs_t, tmask, q_offset, shift, c_base, C, S: tl.constexpr):
    """Landmark rows each token sees: chunk i is visible while i < floor((q_offset + t - shift) / S), counted
    from c_base (the chunk id of landmark row 0: a window of a longer memory) and clamped to the C rows."""
    nvis = tl.minimum(tl.maximum((q_offset + offs_t - shift) // S - c_base, 0), C)
    return tl.where(tmask, nvis, 0)


@triton.jit
def _merge_topk(run, key, KP: tl.constexpr, BLOCK_T: tl.constexpr):
    """The KP largest packed keys of each row of ``run`` (BLOCK_T, KP) and ``key`` (BLOCK_T, BLOCK_C)."""
    blk = tl.topk(key, KP, dim=1)
    return tl.topk(tl.reshape(tl.join(run, blk), [BLOCK_T, 2 * KP]), KP, dim=1)


@triton.jit
def _store_selection(run, b, h, offs_t, tmask, T, HR, IDX, WGT, SC, TOPK: tl.constexpr, KP: tl.constexpr,
                     STICK: tl.constexpr):
    """Store a block's selection from ``run`` (BLOCK_T, KP), its packed keys sorted by score descending:
    the first TOPK, sorted by recency, with their fusion weights and scores."""
    # run: (BLOCK_T, KP) sorted by score descending; keep the first TOPK.
    rank = tl.arange(0, KP)[None, :]
    hi = (run >> 32).to(tl.int32)
    cid = (run & 0xFFFFFFFF).to(tl.int32)
    valid = (hi != -(2**31)) & (rank < TOPK)
    score = _unsortable(hi)
    # Sort by recency: id descending, empty slots (-1) last; the score rides in the low word.
    key2 = (tl.where(valid, cid, -1).to(tl.int64) << 32) | (_sortable(score).to(tl.int64) & 0xFFFFFFFF)
    key2 = tl.sort(key2, dim=1, descending=True)
    cid = (key2 >> 32).to(tl.int32)
    valid = cid >= 0
    score = _unsortable((key2 & 0xFFFFFFFF).to(tl.int32))
    score = tl.where(valid, score, 0.0)
    if STICK:
        # log w_j = s_j - sum_{l<=j} softplus(s_l); empty slots are last, so a prefix sum is enough.
        sp = tl.maximum(score, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(score)))
        sp = tl.where(valid, sp, 0.0)
        w = tl.exp(score - tl.cumsum(sp, axis=1))
    else:
        m = tl.max(tl.where(valid, score, float("-inf")), 1)
        m = tl.where(m == float("-inf"), 0.0, m)
        e = tl.where(valid, tl.exp(score - m[:, None]), 0.0)
        den = tl.sum(e, 1)
        w = e / tl.where(den > 0, den, 1.0)[:, None]
    w = tl.where(valid, w, 0.0)
    out = ((b * T + offs_t.to(tl.int64)) * HR + h)[:, None] * TOPK + rank
    omask = tmask[:, None] & (rank < TOPK)
    tl.store(IDX + out, cid, mask=omask)
    tl.store(WGT + out, w, mask=omask)
    tl.store(SC + out, score, mask=omask)


@triton.jit
def _merge_tile(run, sv, ids, vis, KP: tl.constexpr, BLOCK_T: tl.constexpr):
    """Merge a tile's keys into ``run`` (BLOCK_T, KP): score images ``sv`` (BLOCK_T, N) int32 packed with
    ``ids`` (N,) in the low word; entries outside ``vis`` become empty keys."""
    key = (sv.to(tl.int64) << 32) | ids.to(tl.int64)[None, :]
    key = tl.where(vis, key, tl.full(sv.shape, -(2**31), tl.int64) << 32)
    return _merge_topk(run, key, KP, BLOCK_T)


@triton.jit
def _merge_kept(run, sv, ids, vis, floor, KP: tl.constexpr, BLOCK_T: tl.constexpr, FLOORED: tl.constexpr):
    """:func:`_merge_tile`, then each row's smallest kept score image (``min_hi`` of the skip test; at
    least the row's ``floor`` when FLOORED)."""
    run = _merge_tile(run, sv, ids, vis, KP, BLOCK_T)
    min_hi = (tl.min(run, 1) >> 32).to(tl.int32)
    if FLOORED:
        min_hi = tl.maximum(min_hi, floor)
    return run, min_hi


@triton.jit
def _group_maxima(raw, scale, tmask, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """Each group's best score ``s`` (BLOCK_T, BLOCK_C // GROUP), scaled, from the raw tile ``raw``
    (BLOCK_T, BLOCK_C), and which groups are visible (rows past T saw nothing: unmasked tiles score
    them 0)."""
    s = tl.max(tl.reshape(raw, [BLOCK_T, BLOCK_C // GROUP, GROUP]), 2) * scale
    return s, (s > float("-inf")) & tmask[:, None]


@triton.jit
def _hsa_select_kernel(
    QR, LM, IDX, WGT, SC, PART, FLOOR,
    T, C, HR, DR, q_offset, shift, split_len, c_base,
    stride_qb, stride_qt, stride_qh,
    stride_lb, stride_lc, stride_lh,
    scale,
    S: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    STICK: tl.constexpr, PREC: tl.constexpr, SKIP: tl.constexpr, PARTIAL: tl.constexpr, GROUP: tl.constexpr,
    Q_RESIDENT: tl.constexpr, FLOORED: tl.constexpr,
):
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)  # which slice of split_len landmarks (one slice unless PARTIAL)
    b = bh // HR
    h = bh % HR
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    tmask = offs_t < T
    nvis = _visible_rows(offs_t, tmask, q_offset, shift, c_base, C, S)
    n_max = tl.max(nvis, 0)
    # every token of the block sees landmark rows [0, n_min): a tile below it needs no visibility mask
    n_min = tl.min(tl.where(tmask, nvis, C), 0)
    q_base = QR + b * stride_qb + h * stride_qh + offs_t.to(tl.int64)[:, None] * stride_qt
    l_base = LM + b * stride_lb + h * stride_lh
    sentinel = tl.full([BLOCK_T, KP], -(2**31), tl.int64) << 32  # below any packed score
    run = sentinel
    min_hi = tl.full([BLOCK_T], -(2**31), tl.int32)  # with SKIP: each row's smallest kept score image
    floor = min_hi  # read only when FLOORED (every helper call passes it)
    if FLOORED:
        # Scores at or below each row's floor cannot enter its final top-k (a window of a longer memory:
        # the windows scanned before already hold KP higher ones), so they never force a merge.
        floor = tl.load(FLOOR + (b * T + offs_t.to(tl.int64)) * HR + h, mask=tmask, other=-(2**31))
        min_hi = floor
    lo = pid_s * split_len  # this program's landmarks: [lo, hi)
    hi = tl.minimum(lo + split_len, n_max)
    last = lo + (hi - lo + BLOCK_C - 1) // BLOCK_C * BLOCK_C - BLOCK_C  # first landmark of the newest tile
    if Q_RESIDENT:  # d_r fits one step: the query tile stays in registers for the whole scan
        q_all = tl.load(q_base + offs_d[None, :], mask=tmask[:, None] & (offs_d < DR)[None, :], other=0.0)
    for c0 in range(lo, hi, BLOCK_C):
        # With SKIP the scan runs newest first: a model that favours recent chunks fills its top-k
        # early and skips more of the older tiles. The result is the same in any order (unique keys).
        t0 = last + lo - c0 if SKIP else c0
        cc = t0 + offs_c
        if Q_RESIDENT:
            lt = tl.load(l_base + cc.to(tl.int64)[:, None] * stride_lc + offs_d[None, :],
                         mask=(cc < C)[:, None] & (offs_d < DR)[None, :], other=0.0)
            acc = tl.dot(q_all, tl.trans(lt), input_precision=PREC)
        else:
            acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
            for d0 in range(0, DR, BLOCK_D):
                dd = d0 + offs_d
                dm = dd < DR
                qt = tl.load(q_base + dd[None, :], mask=tmask[:, None] & dm[None, :], other=0.0)
                lt = tl.load(l_base + cc.to(tl.int64)[:, None] * stride_lc + dd[None, :],
                             mask=(cc < C)[:, None] & dm[None, :], other=0.0)
                acc = tl.dot(qt, tl.trans(lt), acc, input_precision=PREC)
        if GROUP > 1:
            # Screening: one key per group of GROUP chunks, its best score with the group's first chunk
            # id. The groups that hold a token's top-k chunks are among its top-KP groups by this key
            # (each higher-ranked group holds a chunk that outranks, so at most k - 1 groups can rank
            # above one holding a top-k chunk); _hsa_rescore_kernel then ranks their chunks. The merge is
            # BLOCK_C / GROUP keys wide instead of BLOCK_C.
            # The work per score is kept to a max: a tile every token sees whole (all but the last tiles
            # of a long context) skips the visibility mask, and the scale multiplies maxima, not every
            # score. Exact: scale > 0 and rounding is monotone, so max(a) * scale == max(a * scale) bit
            # for bit.
            if t0 + BLOCK_C <= n_min:
                raw = acc
            else:
                raw = tl.where(cc[None, :] < nvis[:, None], acc, float("-inf"))
            ids = c_base + t0 + tl.arange(0, BLOCK_C // GROUP) * GROUP
            if SKIP:
                # The skip test of the per-chunk scan (below), on each row's best score in the tile: a
                # group beats the row's smallest kept key exactly when the row's maximum does, and a
                # row's maximum stays in the registers of the threads that hold the row, while the
                # group maxima are a layout change, paid only by a tile that merges (64K-token segment
                # at 64M on the H200: 86.5 -> 77.5 ms). Rows past T and rows that see none of the tile
                # cannot merge.
                best = tl.max(raw, 1) * scale
                hit = tmask & (best > float("-inf")) & (_sortable(best) > min_hi)
                if tl.max(hit.to(tl.int32), 0) > 0:
                    s, vis = _group_maxima(raw, scale, tmask, BLOCK_T, BLOCK_C, GROUP)
                    run, min_hi = _merge_kept(run, _sortable(s), ids, vis, floor, KP, BLOCK_T, FLOORED)
            else:
                s, vis = _group_maxima(raw, scale, tmask, BLOCK_T, BLOCK_C, GROUP)
                run = _merge_tile(run, _sortable(s), ids, vis, KP, BLOCK_T)
        else:
            s = acc * scale
            vis = cc[None, :] < nvis[:, None]
            sv = _sortable(s)
            if SKIP:
                # A key enters a row's top-KP only if it beats the row's smallest kept key (keys are
                # unique: the id is in the low word), so a tile in which no row has such a key changes
                # nothing and its merges are skipped. Exact; pays off once many chunks have been seen.
                # The test needs only the 32-bit score images, not the 64-bit keys (built only for a
                # tile that merges): the scan runs newest first, so every kept chunk (group) is newer
                # than the tile's, and one of the tile's with a score equal to the smallest kept one
                # loses the tie (the id breaks it). Only a strictly higher score can enter; periodic
                # filler, which scores many chunks alike, skips every older copy of a chunk it keeps.
                if tl.max(tl.max((vis & (sv > min_hi[:, None])).to(tl.int32), 1), 0) > 0:
                    run, min_hi = _merge_kept(run, sv, cc + c_base, vis, floor, KP, BLOCK_T, FLOORED)
            else:
                run = _merge_tile(run, sv, cc + c_base, vis, KP, BLOCK_T)
    if PARTIAL:
        # one slice's top-KP keys per token; _merge_slices finishes the selection
        part = (((b * T + offs_t.to(tl.int64)) * HR + h) * tl.num_programs(2) + pid_s)[:, None] * KP \
            + tl.arange(0, KP)[None, :]
        tl.store(PART + part, run, mask=tmask[:, None])
        return
    _store_selection(run, b, h, offs_t, tmask, T, HR, IDX, WGT, SC, TOPK, KP, STICK)


@triton.jit
def _hsa_rescore_kernel(
    QR, LM, GK, IDX, WGT, SC, PART,
    T, C, HR, DR, q_offset, shift, c_base,
    stride_qb, stride_qt, stride_qh,
    stride_lb, stride_lc, stride_lh,
    scale,
    S: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, STICK: tl.constexpr, PARTIAL: tl.constexpr,
):
    """Second pass of a grouped selection: each token's top-KP chunks among the KP * GROUP chunks of its
    top-KP groups (GK (B, T, Hr, KP) packed group keys from the scan, first chunk id in the low word).

    One program = BLOCK_T tokens of one (b, hr); the candidates differ per token, so the scores are
    gathered dot products in fp32 (products of bf16 inputs are exact there), not a tile matmul."""
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HR
    h = bh % HR
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    tmask = offs_t < T
    nvis = _visible_rows(offs_t, tmask, q_offset, shift, c_base, C, S)
    col = tl.arange(0, KP * GROUP)
    row = (b * T + offs_t.to(tl.int64)) * HR + h
    empty = tl.full([BLOCK_T, KP * GROUP], -(2**31), tl.int64) << 32
    gk = tl.load(GK + row[:, None] * KP + (col // GROUP)[None, :], mask=tmask[:, None], other=empty)
    cc = (gk & 0xFFFFFFFF).to(tl.int32) - c_base + (col % GROUP)[None, :]  # landmark row of each candidate
    vis = ((gk >> 32).to(tl.int32) != -(2**31)) & (cc < nvis[:, None])
    cc = tl.where(vis, cc, 0)
    q_base = QR + b * stride_qb + h * stride_qh + offs_t.to(tl.int64)[:, None] * stride_qt
    l_rows = LM + b * stride_lb + h * stride_lh + cc.to(tl.int64)[:, :, None] * stride_lc
    acc = tl.zeros([BLOCK_T, KP * GROUP], dtype=tl.float32)
    for d0 in range(0, DR, BLOCK_D):
        dd = d0 + offs_d
        dm = dd < DR
        qt = tl.load(q_base + dd[None, :], mask=tmask[:, None] & dm[None, :], other=0.0).to(tl.float32)
        lt = tl.load(l_rows + dd[None, None, :], mask=vis[:, :, None] & dm[None, None, :], other=0.0)
        acc += tl.sum(qt[:, None, :] * lt.to(tl.float32), 2)
    key = (_sortable(acc * scale).to(tl.int64) << 32) | (cc + c_base).to(tl.int64)
    run = tl.topk(tl.where(vis, key, empty), KP, dim=1)
    if PARTIAL:
        tl.store(PART + row[:, None] * KP + tl.arange(0, KP)[None, :], run, mask=tmask[:, None])
        return
    _store_selection(run, b, h, offs_t, tmask, T, HR, IDX, WGT, SC, TOPK, KP, STICK)


# ------------------------------------------------------------------------------------ launch settings
@dataclass(frozen=True)
class SelectLaunch:
    """Tile sizes (upper bounds: small T, C or dr shrink them) and launch settings of the selection kernel."""

    block_t: int = 128
    block_c: int = 128
    block_d: int = 64
    warps: int = 8
    stages: int = 3
    #: warps and stages of a long scan (:meth:`warps_stages`): at least :data:`LONG_SCAN_FROM_LANDMARKS`
    #: landmarks per program with the query tile resident; 4 warps leave room for two programs per SM
    long_warps: int = 4
    long_stages: int = 2
    #: skip a landmark tile's top-k merges when no token of the block has a score in it that beats its
    #: current top-k (exact; the tiles are then scanned newest first). ``None``: on from
    #: :data:`SKIP_MERGES_FROM_LANDMARKS` landmarks, where it was measured to win.
    skip_merges: bool | None = None
    #: split the landmarks into this many slices, scanned by separate programs whose top-k are then
    #: merged (exact: the same keys in the same order). ``None``: automatic (:meth:`splits_for`), 1: off.
    splits: int | None = None
    #: chunks per screening group (a power of two; 1: off). The scan keeps each token's top-k *groups*,
    #: ranked by their best chunk, merging BLOCK_C / group keys per tile instead of BLOCK_C; a second
    #: kernel ranks the chunks of those groups (exact: the same selection). Capped at block_c / KP so that
    #: a tile holds at least KP groups; off when the landmarks fit one tile.
    group: int = 16
    #: tokens and d_r elements per step of the rescoring kernel (its gathered (tokens, KP * group, d_r)
    #: landmark tile lives in registers)
    rescore_block_t: int = 16
    rescore_block_d: int = 16
    #: d_r up to this many elements is read in one step (block_d grows to it): the query tile then stays
    #: in registers for the whole scan instead of being reloaded with every landmark tile
    resident_d: int = 128

    def __post_init__(self) -> None:
        if self.skip_merges is not None and not isinstance(self.skip_merges, bool):
            raise ValueError(f"SelectLaunch.skip_merges must be True, False or None (automatic), "
                             f"got {self.skip_merges!r}")
        check_counts(self, skip=("skip_merges",), optional=("splits",))
        for name in ("block_t", "block_c", "block_d", "group", "rescore_block_t", "rescore_block_d", "resident_d"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"SelectLaunch.{name} must be a power of two, got {value}")

    def splits_for(self, programs: int, tiles: int, processors: int) -> int:
        """Landmark slices for a launch of ``programs`` (token blocks x batch x heads) over ``tiles``
        landmark tiles on ``processors`` streaming multiprocessors.

        Automatic: one slice while the programs fill the GPU. Below one program per processor (decode:
        one token, one program per head scanning every landmark), enough slices for about two programs
        per processor, each slice at least :data:`MIN_SPLIT_TILES` tiles: a 64M-token context at decode
        is 8K tiles that one program would scan alone.
        """
        if self.splits is not None:
            return max(1, min(self.splits, tiles))
        if programs >= processors:
            return 1
        return max(1, min(-(-2 * processors // programs), tiles // MIN_SPLIT_TILES))

    def warps_stages(self, num_landmarks: int, resident: bool) -> tuple[int, int]:
        """``(num_warps, num_stages)`` of a launch whose programs each scan ``num_landmarks`` landmarks
        (a prefill: all of them; a split decode: one slice), the query tile ``resident`` in registers
        or not: the long-scan pair from :data:`LONG_SCAN_FROM_LANDMARKS` landmarks with a resident tile,
        else ``warps`` and ``stages``."""
        if resident and num_landmarks >= LONG_SCAN_FROM_LANDMARKS:
            return self.long_warps, self.long_stages
        return self.warps, self.stages

    def merges_skipped(self, num_landmarks: int) -> bool:
        """Whether the kernel skips merges over ``num_landmarks`` landmarks (resolves ``None``)."""
        if self.skip_merges is not None:
            return self.skip_merges
        return num_landmarks >= SKIP_MERGES_FROM_LANDMARKS


#: The automatic ``skip_merges`` starts here: 2**16 landmarks, a 4M-token context at 64-token chunks.
#: Measured on the H200 with the grouped scan (bench_kernels.sweep_select_long: one 16K-token segment,
#: 2 heads of d_r=128, bench/results/h200/select_long.txt): at 4M it costs 4% on random scores (5.89 ->
#: 6.14 ms) and saves 47% on periodic ones (5.66 -> 3.01 ms), the passkey filler's case; at 64M it saves
#: 40% and 62% (80.3 -> 48.2, 80.4 -> 30.7 ms). Below 4M, unmeasured with the grouped scan.
SKIP_MERGES_FROM_LANDMARKS = 1 << 16


#: A launch whose programs each scan at least this many landmarks (2**17: an 8M-token context at
#: 64-token chunks) with the query tile resident runs at ``SelectLaunch.long_warps`` / ``long_stages``.
#: Measured on the H200 with d_r = 128 (bench/results/h200_offload/README.md, "the 64M prefill
#: profiled"): in the trained demo RAMba's 16M prefill the scan of the last 64K-token segments (259K
#: landmarks) took 20.4 ms at 4 warps / 2 stages against 26.2 ms at 8 / 3 (rescoring 1.5 vs 2.2 ms), and
#: its segments took 31-42 ms against 36-53 ms from 8M on (131K landmarks); on a synthetic segment at
#: 64M (1M landmarks), 85.6 vs 109.3 ms (periodic scores) and 159.7 vs 179.0 ms (random). Shorter scans
#: and a reloaded query tile (d_r > resident_d: ramba-370m's 1024) keep 8 / 3, the setting measured there.
LONG_SCAN_FROM_LANDMARKS = 1 << 17


#: The automatic split keeps at least this many landmark tiles in each slice (the merge of the slices'
#: top-k is then small next to the scan). Not measured: chosen so that a slice is several times its merge.
MIN_SPLIT_TILES = 4


#: compute capability major*10 + minor -> settings measured there (H200 at T=128K, d_r=1024: 128x128
#: tiles, 8 warps, 3 stages, bench/results/h200/README.md; groups of 16, the query tile resident up to
#: d_r=128 and the rescoring tiles at T=16K and 1M-64M contexts, bench/results/h200/select_long.txt).
MEASURED: MappingProxyType[int, SelectLaunch] = MappingProxyType({90: SelectLaunch()})
#: Every other architecture (and the CPU interpreter): the H200's values, unmeasured there.
FALLBACK = SelectLaunch()


def select_settings_for(device: torch.device) -> SelectLaunch:
    """The launch settings for ``device`` (its architecture's row of :data:`MEASURED`, else :data:`FALLBACK`)."""
    return row_for(device, MEASURED, FALLBACK)


# Tokens per block of the gather-based backward (bounds its (Tb, K, dr) temporaries).
_BWD_TOKENS = 8192


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (the interpreter: a few, so that tests split)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _launch(q_r: Tensor, landmarks: Tensor, topk: int, chunk_size: int, q_offset: int, stick: bool, scale: float,
            window: int | None, launch: SelectLaunch, c_base: int = 0, keys_only: bool = False,
            floor: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | Tensor:
    """The kernel over ``landmarks`` (chunk ids ``c_base ..``): ``(idx, w, s)``, or with ``keys_only`` each
    token's top-KP packed keys ``(B, T, Hr, slices * KP)`` int64 (:func:`hsa_select_windows_triton`).
    ``floor`` ``(B, T, Hr)`` int32 score images: merges are skipped (newest first) unless a score is
    above its row's floor."""
    B, T, Hr, dr = q_r.shape
    C = landmarks.shape[1]
    dev = q_r.device
    # keys_only: both kernels stop at their top-KP keys and never write a selection, so its three
    # outputs are placeholders (at a 64K-token segment they would be 12 MiB per landmark window)
    out_shape = (1,) if keys_only else (B, T, Hr, topk)
    idx = torch.empty(out_shape, device=dev, dtype=torch.int32)
    w = torch.empty(out_shape, device=dev, dtype=torch.float32)
    s = torch.empty(out_shape, device=dev, dtype=torch.float32)
    shift = 0 if window is None else max(window - chunk_size, 0)
    bt = min(launch.block_t, max(16, triton.next_power_of_2(T)))
    bc = min(launch.block_c, max(16, triton.next_power_of_2(C)))
    bd = max(16, triton.next_power_of_2(dr))
    bd = bd if bd <= launch.resident_d else min(launch.block_d, bd)
    kp = max(triton.next_power_of_2(topk), 2)
    if kp > bc:
        bc = kp
    tiles = triton.cdiv(C, bc)
    # a tile must hold at least KP groups; over a single tile (training at 4K: 64 chunks) the screening
    # saves nothing and would add the rescoring launch
    group = min(launch.group, bc // kp) if tiles > 1 else 1
    splits = launch.splits_for(triton.cdiv(T, bt) * B * Hr, tiles, _processors(dev))
    split_len = triton.cdiv(tiles, splits) * bc
    splits = triton.cdiv(C, split_len)  # no empty slice
    partial = splits > 1 or keys_only or group > 1
    part = torch.empty((B, T, Hr, splits, kp), device=dev, dtype=torch.int64) if partial else idx
    prec = "ieee" if q_r.dtype == torch.float32 else "tf32"
    strides = (q_r.stride(0), q_r.stride(1), q_r.stride(2), landmarks.stride(0), landmarks.stride(1),
               landmarks.stride(2))
    resident = bd >= dr  # d_r in one step: the query tile stays in registers for the whole scan
    warps, stages = launch.warps_stages(min(C, split_len), resident)  # the landmarks one program scans
    _hsa_select_kernel[(triton.cdiv(T, bt), B * Hr, splits)](
        q_r, landmarks, idx, w, s, part, idx if floor is None else floor,
        T, C, Hr, dr, q_offset, shift, split_len, c_base, *strides, scale,
        S=chunk_size, TOPK=topk, KP=kp, BLOCK_T=bt, BLOCK_C=bc, BLOCK_D=bd, STICK=stick, PREC=prec,
        SKIP=floor is not None or launch.merges_skipped(c_base + C), PARTIAL=partial, GROUP=group,
        Q_RESIDENT=resident, FLOORED=floor is not None,
        num_warps=warps, num_stages=stages,
    )
    if group > 1:
        # the scan left each slice's top-KP groups; the best KP over the slices go to the rescoring pass
        groups = part[..., 0, :] if splits == 1 else part.flatten(3).topk(kp, dim=-1).values
        groups = groups.contiguous()
        keys = torch.empty((B, T, Hr, kp), device=dev, dtype=torch.int64) if keys_only else idx
        rbt = min(launch.rescore_block_t, max(16, triton.next_power_of_2(T)))
        rbd = min(launch.rescore_block_d, max(16, triton.next_power_of_2(dr)))
        _hsa_rescore_kernel[(triton.cdiv(T, rbt), B * Hr)](
            q_r, landmarks, groups, idx, w, s, keys,
            T, C, Hr, dr, q_offset, shift, c_base, *strides, scale,
            S=chunk_size, TOPK=topk, KP=kp, GROUP=group, BLOCK_T=rbt, BLOCK_D=rbd, STICK=stick,
            PARTIAL=keys_only, num_warps=warps,
        )
        return keys if keys_only else (idx, w, s)
    if keys_only:
        return part.flatten(3)
    if splits > 1:
        return _merge_slices(part, topk, "stick_breaking" if stick else "softmax")
    return idx, w, s


_EMPTY_IMAGE = -(2**31)  # an int32 score image below every score's: an empty slot
_EMPTY_KEY = _EMPTY_IMAGE << 32  # the packed key of an empty slot


def _scores_of(images: Tensor) -> Tensor:
    """fp32 scores of int32 score images (the kernel's ``_unsortable``, in torch)."""
    return (images ^ ((images >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _images_of(scores: Tensor) -> Tensor:
    """int32 score images of fp32 scores (the kernel's ``_sortable``, in torch)."""
    bits = scores.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _merge_slices(part: Tensor, topk: int, weighting: str) -> tuple[Tensor, Tensor, Tensor]:
    """Finish a split selection: ``part`` ``(B, T, Hr, splits, KP)`` int64 packed keys (score image in the
    high word, chunk id in the low), each slice's top-KP. The top ``topk`` keys overall are the ones the
    unsplit scan keeps (same keys, same order); then, as the kernel's epilogue does, sorted by recency
    (id descending, empty slots last) with their fusion weights. Returns ``(idx int32, w fp32, s fp32)``.
    """
    keys = part.flatten(3).topk(topk, dim=-1).values  # (B, T, Hr, topk), by score then id
    valid = keys != _EMPTY_KEY
    hi = (keys >> 32).to(torch.int32)
    score = _scores_of(hi)
    ids = torch.where(valid, (keys & 0xFFFFFFFF).to(torch.int32), -1)
    ids, order = ids.sort(dim=-1, descending=True)
    valid = ids >= 0
    score = torch.where(valid, score.gather(-1, order), 0.0)
    w = torch.where(valid, fusion_weights(score, valid, weighting).float(), 0.0)
    return ids, w, score


class HSASelectFunction(torch.autograd.Function):
    """Indices and weights of the fused selection; the weights' gradient to ``q_r`` and the landmarks."""

    @staticmethod
    def forward(ctx, q_r, landmarks, topk, chunk_size, q_offset, weighting, scale, window, launch):
        idx, w, s = _launch(q_r, landmarks, topk, chunk_size, q_offset, weighting == "stick_breaking", scale,
                            window, launch)
        ctx.save_for_backward(q_r, landmarks, idx, s)
        ctx.weighting, ctx.scale = weighting, scale
        ctx.mark_non_differentiable(idx)
        return idx, w

    @staticmethod
    def backward(ctx, _didx, dw):
        q_r, landmarks, idx, s = ctx.saved_tensors
        valid = idx >= 0
        with torch.enable_grad():
            sv = s.detach().requires_grad_()
            w = fusion_weights(sv, valid, ctx.weighting)
            (ds,) = torch.autograd.grad(w, sv, dw)
        ds = torch.where(valid, ds, torch.zeros_like(ds)) * ctx.scale  # (B,T,Hr,K) fp32
        B, T, Hr, dr = q_r.shape
        C = landmarks.shape[1]
        dq = torch.empty_like(q_r, dtype=torch.float32)
        dl = torch.zeros((B * C * Hr, dr), device=q_r.device, dtype=torch.float32)
        lm = landmarks.float()
        safe = idx.clamp(min=0).long()
        bh_base = (torch.arange(B, device=q_r.device)[:, None, None, None] * C * Hr
                   + torch.arange(Hr, device=q_r.device)[None, None, :, None])
        flat = (bh_base + safe * Hr)  # row of landmarks.reshape(B*C*Hr, dr)
        lm_rows = lm.reshape(B * C * Hr, dr)
        for t0 in range(0, T, _BWD_TOKENS):
            t1 = min(T, t0 + _BWD_TOKENS)
            f = flat[:, t0:t1]
            d = ds[:, t0:t1]  # (B,Tb,Hr,K)
            g = lm_rows[f.reshape(-1)].view(*f.shape, dr)  # kept landmarks only
            dq[:, t0:t1] = torch.einsum("bthk,bthkd->bthd", d, g)
            contrib = d[..., None] * q_r[:, t0:t1, :, None, :].float()
            # index_add_ accumulates with atomics on CUDA (run-to-run differences in the last bits);
            # under torch.use_deterministic_algorithms(True) PyTorch switches it to its deterministic
            # (sorted) implementation, so users who need bitwise-reproducible training get it there.
            dl.index_add_(0, f.reshape(-1), contrib.reshape(-1, dr))
        return dq.to(q_r.dtype), dl.view(B, C, Hr, dr).to(landmarks.dtype), None, None, None, None, None, None, None


def _score_scale(scale: float | None, dr: int) -> float:
    """The score scale (default ``dr ** -0.5``), refused unless positive: the grouped scan scales each
    group's maximum, which equals the maximum of the scaled scores only for a positive scale."""
    scale = dr**-0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return scale


def hsa_select_triton(q_r: Tensor, landmarks: Tensor, *, topk: int, chunk_size: int, q_offset: int = 0,
                      weighting: str = "stick_breaking", scale: float | None = None, window: int | None = None,
                      gumbel: bool = False, launch: SelectLaunch | None = None) -> tuple[Tensor, Tensor]:
    """Fused selection; same contract as :func:`hsa_core.ops.hsa_select`.

    Args:
        q_r: ``(B, T, Hr, dr)`` retrieval queries; landmarks: ``(B, C, Hr, dr)``.
        launch: tile sizes and launch settings (default: the table row of q_r's device).
    Returns:
        ``indices`` int32 ``(B, T, Hr, topk)`` sorted descending, -1 last; ``weights`` fp32, 0 on empty slots.
    """
    B, T, Hr, dr = q_r.shape
    C = landmarks.shape[1]
    kwargs = dict(topk=topk, chunk_size=chunk_size, q_offset=q_offset, weighting=weighting, scale=scale,
                  window=window, gumbel=gumbel)
    if gumbel or T == 0 or C == 0 or B * Hr == 0 or topk > 64:
        return hsa_select_naive(q_r, landmarks, **kwargs)
    scale = _score_scale(scale, dr)
    q_r = q_r if q_r.stride(-1) == 1 else q_r.contiguous()
    landmarks = landmarks if landmarks.stride(-1) == 1 else landmarks.contiguous()
    return HSASelectFunction.apply(q_r, landmarks, topk, chunk_size, q_offset, weighting, scale, window,
                                   launch or select_settings_for(q_r.device))


def _floor(running: Tensor, q_norm: Tensor, landmarks: Tensor, scale: float) -> Tensor:
    """Each row's floor for a window's scan: ``(B, T, Hr)`` int32 score images below which no chunk of
    ``landmarks`` ``(B, n, Hr, dr)`` can enter the running top-KP ``running`` ``(B, T, Hr, KP)`` (sorted
    descending; an unfilled row has no floor).

    The kept scores come from the rescoring kernel's fp32 sums, the scan compares its tl.dot scores:
    both are fp32 sums of the same dr products in different orders, each within dr * 2**-24 * |q| * |l|
    of the exact score. The floor sits twice that below the KP-th kept score, so a chunk at or under it
    scores strictly less than KP kept chunks in every rounding and cannot enter whatever its id; an
    equal score still merges, in any window order.
    """
    hi = (running[..., -1] >> 32).to(torch.int32)
    kth = _scores_of(hi)
    dr = landmarks.shape[-1]
    l_max = torch.linalg.vector_norm(landmarks, dim=-1, dtype=torch.float32).amax(dim=1)  # (B, Hr)
    margin = 4 * dr * 2.0**-24 * q_norm * l_max[:, None, :] * scale
    below = kth - margin - kth.abs() * 2.0**-22  # and a few ulps for the two roundings of the scale
    empty = hi == _EMPTY_IMAGE
    return torch.where(empty | ~torch.isfinite(below), hi.new_tensor(_EMPTY_IMAGE), _images_of(below)).contiguous()


@torch.no_grad()
def hsa_select_windows_triton(q_r: Tensor, windows: Iterable[tuple[int, Tensor]], *, topk: int, chunk_size: int,
                              q_offset: int = 0, weighting: str = "stick_breaking", scale: float | None = None,
                              window: int | None = None, launch: SelectLaunch | None = None) -> tuple[Tensor, Tensor]:
    """The fused selection over landmarks that arrive in windows (inference only: no gradient).

    A memory whose landmarks live in host memory is scored a window at a time, each copied in just
    before it is read, so the device never holds more than a window. Each window's top-KP keys (score
    image and absolute chunk id) merge into the running top-KP, and the same keys in the same order
    give the same selection as :func:`hsa_select_triton` over all landmarks at once. Each window's scan
    skips the merges of tiles whose scores fall below the KP-th kept score, so windows given newest
    first (where a model's best chunks mostly are, and where equal scores win) skip the most.

    Args:
        q_r: ``(B, T, Hr, dr)`` retrieval queries.
        windows: ``(c_base, landmarks (B, n, Hr, dr))`` pairs, chunk ids ``c_base .. c_base + n - 1``, in
            any order, on ``q_r``'s device and dtype. Each is read before the next is taken, so a
            generator may reuse one buffer.
    Returns:
        ``indices`` int32 and ``weights`` fp32 ``(B, T, Hr, topk)``, as :func:`hsa_select_triton`.
    """
    B, T, Hr, dr = q_r.shape
    scale = _score_scale(scale, dr)
    launch = launch or select_settings_for(q_r.device)
    q_r = q_r if q_r.stride(-1) == 1 else q_r.contiguous()
    kp = max(triton.next_power_of_2(topk), 2)
    running = torch.full((B, T, Hr, kp), _EMPTY_KEY, device=q_r.device, dtype=torch.int64)
    q_norm = torch.linalg.vector_norm(q_r, dim=-1, dtype=torch.float32)  # (B, T, Hr), for _floor
    stick = weighting == "stick_breaking"
    for c_base, lm in windows:
        if lm.shape[1] == 0 or T == 0:
            continue
        lm = lm if lm.stride(-1) == 1 else lm.contiguous()
        keys = _launch(q_r, lm, topk, chunk_size, q_offset, stick, scale, window, launch, c_base=c_base,
                       keys_only=True, floor=_floor(running, q_norm, lm, scale))
        running = torch.cat([running, keys], -1).topk(kp, dim=-1).values
        del lm, keys  # a generator may copy the next window in where this one was (one at a time)
    idx, w, _ = _merge_slices(running[..., None, :], topk, weighting)
    return idx, w


__all__ = ["FALLBACK", "LONG_SCAN_FROM_LANDMARKS", "MEASURED", "SKIP_MERGES_FROM_LANDMARKS", "HSASelectFunction",
           "SelectLaunch", "hsa_select_triton", "hsa_select_windows_triton", "select_settings_for"]
