"""Fused selection kernel vs the fp64 naive twin: indices, weights, and the weights' gradients."""

from __future__ import annotations

import dataclasses
import itertools

import hsa_kernels.hsa_select.selection as sel_mod
import pytest
import torch
from hsa_kernels.hsa_select import hsa_select_naive, hsa_select_triton
from hsa_kernels.hsa_select.naive import visible_chunks

from .helpers import DEV, PoisonTorch, grid_randn, rel_err


@dataclasses.dataclass(frozen=True)
class Case:
    """One selection checked against the fp64 twin by ``_check``."""

    B: int  # batch
    T: int  # tokens
    Hr: int  # retrieval heads
    dr: int  # retrieval head dim
    C: int  # landmarks (chunks)
    S: int  # chunk size
    K: int  # top-k: slots per token
    weighting: str  # "stick_breaking" or "softmax"
    q_offset: int = 0  # position of the first token
    window: int | None = None  # sliding window in tokens, whose chunks are hidden (None: none)


def _check(case: Case, *, dtype: torch.dtype = torch.float32, device: str = DEV, scale: float = 1.0,
           launch: sel_mod.SelectLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of ``case`` (queries times ``scale``): Triton indices equal to the fp64 twin's, weights
    and their gradients close; returns ``(idx, w)``."""
    B, T, Hr, dr, C, S, K = case.B, case.T, case.Hr, case.dr, case.C, case.S, case.K
    q_offset, window, weighting = case.q_offset, case.window, case.weighting
    q = (torch.randn(B, T, Hr, dr, device=device) * scale).to(dtype)
    lm = torch.randn(B, C, Hr, dr, device=device).to(dtype)
    kw = dict(topk=K, chunk_size=S, q_offset=q_offset, weighting=weighting, window=window)
    qa, la = q.clone().requires_grad_(), lm.clone().requires_grad_()
    idx, w = hsa_select_triton(qa, la, **kw, launch=launch)
    g = torch.randn(w.shape, device=device)
    (w * g).sum().backward()
    qb, lb = q.double().requires_grad_(), lm.double().requires_grad_()
    ridx, rw = hsa_select_naive(qb, lb, **kw)
    (rw * g.double()).sum().backward()
    assert idx.dtype == torch.int32 and w.dtype == torch.float32 and idx.shape == (B, T, Hr, K)
    assert torch.equal(idx, ridx), (idx != ridx).nonzero()[:5]
    assert torch.isfinite(w).all()
    assert (w[idx < 0] == 0).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(w.double(), rw.double(), rtol=tol, atol=tol)
    assert rel_err(qa.grad, qb.grad) < tol and rel_err(la.grad, lb.grad) < tol
    return idx, w


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(B=1, T=70, Hr=1, dr=32, C=5, S=16, K=3, weighting="stick_breaking"),
                     id="fewer-visible-chunks-than-K-early-on"),
        pytest.param(Case(B=2, T=40, Hr=2, dr=48, C=9, S=8, K=4, weighting="softmax", q_offset=30, window=20),
                     id="q-offset-window-two-retrieval-heads"),
        pytest.param(Case(B=1, T=33, Hr=1, dr=16, C=40, S=4, K=8, weighting="stick_breaking", q_offset=7),
                     id="several-landmark-blocks-K=8"),
        pytest.param(Case(B=1, T=20, Hr=1, dr=16, C=3, S=16, K=2, weighting="softmax"),
                     id="T-below-S-for-most-tokens-empty-rows"),
    ],
)
def test_select_fp32(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sel_mod, "torch", PoisonTorch())
    _check(case)


@pytest.mark.triton
def test_select_all_empty():
    idx, w = _check(Case(B=1, T=10, Hr=1, dr=16, C=2, S=16, K=3, weighting="stick_breaking"))
    assert (idx == -1).all() and (w == 0).all()


@pytest.mark.triton
def test_select_extreme_scores():
    # Scores of ~1e2: softplus/sigmoid saturate; weights must stay finite and match.
    _check(Case(B=1, T=40, Hr=1, dr=16, C=6, S=8, K=4, weighting="stick_breaking"), scale=25.0)


@pytest.mark.slow
@pytest.mark.triton
def test_select_launch_settings_shrink_and_validate():
    # Smaller tiles than the defaults: several landmark tiles and token tiles per program grid.
    launch = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1)
    _check(Case(B=1, T=70, Hr=1, dr=32, C=30, S=2, K=4, weighting="softmax"), launch=launch)
    with pytest.raises(ValueError, match=r"SelectLaunch\.block_c must be an int >= 1, got 0"):
        sel_mod.SelectLaunch(block_c=0)


SKIPPING = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1, skip_merges=True, group=1)


@pytest.mark.triton
@pytest.mark.parametrize("order", ["oldest-best", "newest-best", "random"])
def test_select_skip_merges_is_exact(order: str) -> None:
    """With ``skip_merges`` the tiles are scanned newest first and a tile in which no token beats its kept
    top-k is skipped. Scores that rise with the chunk index make every tile after the first skippable,
    falling ones make none, random ones mix both; the selection must equal the fp64 twin's in all three."""
    T, C, S, K, dr = 96, 48, 2, 4, 16  # three landmark tiles of 16, six token blocks of 16
    g = torch.Generator(device="cpu").manual_seed(3)
    q = torch.randn(1, T, 1, dr, generator=g).abs()  # positive: the score follows the landmark's scale
    lm = torch.randn(1, C, 1, dr, generator=g).abs() * 0.1
    ramp = torch.arange(C, dtype=torch.float32)[None, :, None, None]
    if order == "oldest-best":
        lm = lm + (C - ramp) * 0.05
    elif order == "newest-best":
        lm = lm + ramp * 0.05
    else:
        lm = torch.randn(1, C, 1, dr, generator=g)
    for q_offset, window in ((0, None), (17, 24)):
        kw = dict(topk=K, chunk_size=S, q_offset=q_offset, weighting="softmax", window=window)
        idx, w = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=SKIPPING)
        ridx, rw = hsa_select_naive(q.double(), lm.double(), **kw)
        assert torch.equal(idx.cpu(), ridx), (idx.cpu() != ridx).nonzero()[:5]
        torch.testing.assert_close(w.cpu().double(), rw.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_select_skip_merges_breaks_ties_like_the_full_scan() -> None:
    """Periodic filler gives many chunks the same score. Keys order equal scores by chunk id (the newer
    chunk wins), so the skipping scan must let an older chunk with an equal score pass untouched and a
    newer one in: both scans pick the same chunks, and those are the top-k by (score, id)."""
    T, C, S, K, dr, period = 96, 48, 2, 4, 16, 5
    g = torch.Generator(device="cpu").manual_seed(5)
    q = torch.randn(1, T, 1, dr, generator=g)
    lm = torch.randn(1, period, 1, dr, generator=g)[:, torch.arange(C) % period]  # chunk c = chunk c % 5
    full = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1, skip_merges=False, group=1)
    for q_offset, window in ((0, None), (17, 24)):
        kw = dict(topk=K, chunk_size=S, q_offset=q_offset, weighting="softmax", window=window)
        idx, w = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=SKIPPING)
        fidx, fw = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=full)
        assert torch.equal(idx.cpu(), fidx.cpu()) and torch.equal(w.cpu(), fw.cpu())
        # the rule itself, in fp64: among visible chunks, order by score then id, keep K, newest first
        scores = torch.einsum("td,cd->tc", q[0, :, 0].double(), lm[0, :, 0].double()) * dr**-0.5
        visible = visible_chunks(torch.arange(T) + q_offset, C, S, window)  # (T, C) bool
        order = torch.arange(C).flip(0)  # id descending, then a stable sort by score
        ranked = order[torch.sort(scores[:, order].masked_fill(~visible[:, order], float("-inf")), dim=1,
                                  descending=True, stable=True).indices]
        for t in range(T):
            want = sorted(ranked[t, :min(K, int(visible[t].sum()))].tolist(), reverse=True)
            got = [i for i in idx[0, t, 0].tolist() if i >= 0]
            assert got == want, (t, got, want)


GROUPED_SCORES = ["random", "newest-best", "oldest-best", "one-group-holds-all", "adjacent-ties"]


def _grouped_case(scores: str, C: int, dr: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (1, 32, 2, dr) and landmarks (1, C, 2, dr) whose scores put the top-k where the screening by
    groups could go wrong: all in one group, in the newest or oldest groups, or tied inside a group."""
    q = torch.randn(1, 32, 2, dr, generator=g).abs()
    lm = torch.randn(1, C, 2, dr, generator=g)
    ramp = torch.arange(C, dtype=torch.float32)[None, :, None, None] / C
    if scores == "newest-best":
        lm = lm.abs() * 0.1 + ramp
    elif scores == "oldest-best":
        lm = lm.abs() * 0.1 + (1 - ramp)
    elif scores == "one-group-holds-all":  # chunks 16..31 (one group of 16, two of 8, ...) outscore the rest
        lm[:, 16:32] = lm[:, 16:32].abs() + 2.0
    elif scores == "adjacent-ties":  # chunk c = chunk c // 2: equal scores side by side within every group
        lm = lm[:, torch.arange(C) // 2]
    return q, lm


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("scores", GROUPED_SCORES)
def test_select_grouped_screening_equals_per_chunk_merges(scores: str) -> None:
    """The scan keeps each token's top groups (by their best chunk), the rescoring pass ranks those groups'
    chunks: the same indices and weights as merging every chunk, for groups of 2, 4 and 8 chunks (tile of
    32, top-4), with and without skipped merges, a window and an offset, and ties broken by id like the
    per-chunk scan. At offset 200 every token sees all 80 chunks, so the first two tiles are scanned
    without a visibility mask and the last with one, and the scale (0.3, not a power of two) multiplies
    the group maxima: the same bits as scaling every score first."""
    g = torch.Generator(device="cpu").manual_seed(31)
    q, lm = _grouped_case(scores, 80, 16, g)
    q, lm = q.to(DEV), lm.to(DEV)
    per_chunk = sel_mod.SelectLaunch(block_t=16, block_c=32, block_d=16, warps=2, stages=1, skip_merges=False, group=1)
    for q_offset, window, weighting, scale in ((0, None, "stick_breaking", None), (100, 48, "softmax", None),
                                               (200, None, "softmax", 0.3)):
        kw = dict(topk=4, chunk_size=2, q_offset=q_offset, weighting=weighting, window=window, scale=scale)
        oidx, ow = hsa_select_triton(q, lm, **kw, launch=per_chunk)
        if scores != "adjacent-ties":  # distinct scores: the fp64 twin picks the same chunks
            ridx, _ = hsa_select_naive(q.cpu().double(), lm.cpu().double(), **kw)
            assert torch.equal(oidx.cpu(), ridx), q_offset
        for group, skip in ((2, False), (8, True), (4, True)):
            grouped = dataclasses.replace(per_chunk, group=group, skip_merges=skip)
            idx, w = hsa_select_triton(q, lm, **kw, launch=grouped)
            assert torch.equal(idx, oidx), (group, skip, q_offset, (idx != oidx).nonzero()[:4])
            torch.testing.assert_close(w, ow, rtol=1e-6, atol=1e-6)


def test_select_launch_group_is_a_power_of_two() -> None:
    with pytest.raises(ValueError, match=r"SelectLaunch\.group must be a power of two, got 12"):
        sel_mod.SelectLaunch(group=12)
    with pytest.raises(ValueError, match=r"SelectLaunch\.group must be an int >= 1, got 0"):
        sel_mod.SelectLaunch(group=0)


SPLIT_CASES = [  # T, C, slices, periodic landmarks, (q_offset, window) pairs
    pytest.param(1, 70, 3, False, ((139, 24),), id="decode"),
    pytest.param(40, 70, 5, False, ((0, None),), id="prefill-empty-slices"),  # tokens see <= 19 of 70
    pytest.param(1, 48, 7, True, ((95, None),), id="decode-ties"),
]


@pytest.mark.triton
@pytest.mark.parametrize("skip", [pytest.param(False, id="full-scan"), pytest.param(True, id="skip-merges")])
@pytest.mark.parametrize(("T", "C", "splits", "periodic", "offsets"), SPLIT_CASES)
def test_select_split_landmarks_equal_one_scan(skip: bool, T: int, C: int, splits: int, periodic: bool,
                                               offsets: tuple[tuple[int, int | None], ...]) -> None:
    """Slices of the landmarks scanned by separate programs, their top-k merged after: the same chunks as
    one program scanning them all and as the fp64 twin, the same weights; slices that no token sees,
    and ties across slices (periodic landmarks), included. Decode (one token) is the case this is for."""
    g = torch.Generator(device="cpu").manual_seed(11)
    one = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1, skip_merges=skip, splits=1)
    split = dataclasses.replace(one, splits=splits)
    weighting = "stick_breaking" if skip else "softmax"
    q = torch.randn(1, T, 2, 16, generator=g)
    lm = torch.randn(1, C, 2, 16, generator=g)
    if periodic:  # ties exact in any summation order (grid values)
        q, lm = grid_randn(1, T, 2, 16, generator=g), grid_randn(1, 5, 2, 16, generator=g)
        lm = lm[:, torch.arange(C) % 5]
    for q_offset, window in offsets:
        kw = dict(topk=6, chunk_size=2, q_offset=q_offset, weighting=weighting, window=window)
        idx, w = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=split)
        oidx, ow = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=one)
        assert torch.equal(idx.cpu(), oidx.cpu()), (q_offset, window)
        torch.testing.assert_close(w.cpu(), ow.cpu(), rtol=1e-6, atol=1e-6)
        if not periodic:  # distinct scores: the fp64 twin picks the same chunks
            ridx, rw = hsa_select_naive(q.double(), lm.double(), **kw)
            assert torch.equal(idx.cpu(), ridx)
            torch.testing.assert_close(w.cpu().double(), rw.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("scores", [pytest.param("distinct", marks=pytest.mark.slow),  # 9-13 s
                                    pytest.param("periodic", marks=pytest.mark.slow),  # 10 s
                                    "ties-at-the-floor"])
@pytest.mark.parametrize("order", ["oldest-first", "newest-first"])
def test_select_windows_equal_one_scan(order: str, scores: str) -> None:
    """Landmarks scored a window at a time (a memory whose landmarks live in host memory), the windows'
    top-k merged, each window's merges skipped below the KP-th kept score: the same chunks and weights as
    one scan over all of them, and as the fp64 twin, for windows of uneven sizes given in either order, a
    window nobody sees yet, a decode token, and equal scores across windows: periodic landmarks, and
    newer windows holding only copies of the chunk the older window ranks KP-th (each copy must
    displace it: equal score, newer id)."""
    from hsa_kernels.hsa_select import hsa_select_windows_triton

    g = torch.Generator(device="cpu").manual_seed(21)
    C, cuts = 70, (0, 16, 19, 48, 70)
    ties = scores != "distinct"
    # Ties are made of grid values (grid_randn): equal landmarks then score bit-equal in any summation order.
    lm = torch.randn(1, C, 2, 16, generator=g)
    if scores == "periodic":
        lm = grid_randn(1, 7, 2, 16, generator=g)[:, torch.arange(C) % 7]
    elif scores == "ties-at-the-floor":  # score = a_c * (q . v) with q, v > 0: the same order for every token
        a = torch.full((C,), 1 / 16)
        a[:16] = 1 + torch.arange(16) / 16  # window 0: chunk 15 best ... chunk 8 eighth (KP = 8)
        a[16::2] = a[8]
        lm = (grid_randn(1, 1, 2, 16, generator=g).abs() + 0.5) * a[None, :, None, None]
    windows = [(a, lm[:, a:b]) for a, b in itertools.pairwise(cuts)]
    if order == "newest-first":
        windows.reverse()
    launch = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1)
    for T, q_offset, window, weighting in ((40, 0, None, "stick_breaking"), (1, 139, 24, "softmax")):
        q = grid_randn(1, T, 2, 16, generator=g) if ties else torch.randn(1, T, 2, 16, generator=g)
        q = q.abs() if scores == "ties-at-the-floor" else q
        topk = 8 if scores == "ties-at-the-floor" else 6  # = KP: the KP-th kept chunk is selected
        kw = dict(topk=topk, chunk_size=2, q_offset=q_offset, weighting=weighting, window=window)
        idx, w = hsa_select_windows_triton(q.to(DEV), [(c, x.to(DEV)) for c, x in windows], **kw, launch=launch)
        oidx, ow = hsa_select_triton(q.to(DEV), lm.to(DEV), **kw, launch=launch)
        assert torch.equal(idx.cpu(), oidx.cpu()), (T, q_offset)
        torch.testing.assert_close(w.cpu(), ow.cpu(), rtol=1e-6, atol=1e-6)
        if not ties:
            ridx, rw = hsa_select_naive(q.double(), lm.double(), **kw)
            assert torch.equal(idx.cpu(), ridx)
            torch.testing.assert_close(w.cpu().double(), rw.double(), rtol=1e-5, atol=1e-5)


def test_select_windows_holds_one_window_at_a_time() -> None:
    """A memory with its landmarks in host memory copies each window to the device just before it is
    scored: the selection must drop its references to a window before it takes the next one, or two
    windows are on the device at once (16 MiB each for the demo RAMba, 64 MiB at ramba-370m's d_r)."""
    import weakref

    from hsa_kernels.hsa_select import hsa_select_windows_triton

    g = torch.Generator(device="cpu").manual_seed(5)
    q = torch.randn(1, 6, 2, 16, generator=g).to(DEV)
    alive: list[int] = []  # windows still referenced when the next was taken
    previous: list[weakref.ref] = []

    def windows():
        for c0 in (24, 12, 0):  # newest first, as ChunkStore.landmark_windows gives them
            alive.append(sum(r() is not None for r in previous))
            window = torch.randn(1, 12, 2, 16, generator=g).to(DEV)
            previous.append(weakref.ref(window))
            yield c0, window
            del window

    launch = sel_mod.SelectLaunch(block_t=16, block_c=16, block_d=16, warps=2, stages=1)
    idx, _ = hsa_select_windows_triton(q, windows(), topk=4, chunk_size=2, q_offset=80, launch=launch)
    assert alive == [0, 0, 0]
    assert idx.shape == (1, 6, 2, 4) and bool((idx >= 0).all())


def test_select_splits_automatic_only_below_one_program_per_processor() -> None:
    auto = sel_mod.SelectLaunch()
    assert auto.splits is None
    assert auto.splits_for(programs=132, tiles=8192, processors=132) == 1  # a prefill segment fills the GPU
    assert auto.splits_for(programs=1, tiles=8192, processors=132) == 264  # decode at 64M: 2 per processor
    assert auto.splits_for(programs=1, tiles=8, processors=132) == 2  # at least MIN_SPLIT_TILES tiles a slice
    assert auto.splits_for(programs=1, tiles=3, processors=132) == 1
    assert sel_mod.SelectLaunch(splits=1).splits_for(1, 8192, 132) == 1
    assert sel_mod.SelectLaunch(splits=9).splits_for(132, 4, 132) == 4  # never more slices than tiles
    with pytest.raises(ValueError, match=r"SelectLaunch\.splits must be an int >= 1, got 0"):
        sel_mod.SelectLaunch(splits=0)


@pytest.mark.triton
def test_select_skip_merges_with_gradients() -> None:
    _check(Case(B=1, T=70, Hr=1, dr=32, C=30, S=2, K=4, weighting="stick_breaking"), launch=SKIPPING)
    with pytest.raises(ValueError, match=r"SelectLaunch\.skip_merges must be True, False or None \(automatic\), got 1"):
        sel_mod.SelectLaunch(skip_merges=1)


def test_select_skip_merges_automatic_from_the_measured_landmark_count() -> None:
    """``None`` (the default) skips merges from 2**16 landmarks on, where the H200 measured a gain; an
    explicit value wins at any count."""
    auto = sel_mod.SelectLaunch()
    assert auto.skip_merges is None and sel_mod.SKIP_MERGES_FROM_LANDMARKS == 1 << 16
    assert not auto.merges_skipped((1 << 16) - 1) and auto.merges_skipped(1 << 16)
    assert sel_mod.SelectLaunch(skip_merges=False).merges_skipped(1 << 24) is False
    assert sel_mod.SelectLaunch(skip_merges=True).merges_skipped(1) is True


def test_select_long_scans_take_the_long_scan_warps() -> None:
    """4 warps / 2 stages from LONG_SCAN_FROM_LANDMARKS landmarks per program with the query tile resident
    (measured there on the H200); shorter scans and a reloaded query tile keep warps / stages."""
    auto = sel_mod.SelectLaunch()
    n = sel_mod.LONG_SCAN_FROM_LANDMARKS
    assert auto.warps_stages(n, resident=True) == (auto.long_warps, auto.long_stages) == (4, 2)
    assert auto.warps_stages(n - 1, resident=True) == (auto.warps, auto.stages) == (8, 3)
    assert auto.warps_stages(1 << 26, resident=False) == (8, 3)
    own = sel_mod.SelectLaunch(warps=2, stages=1, long_warps=8, long_stages=4)
    assert own.warps_stages(n, resident=True) == (8, 4) and own.warps_stages(16, resident=True) == (2, 1)
    with pytest.raises(ValueError, match=r"SelectLaunch\.long_warps must be an int >= 1, got 0"):
        sel_mod.SelectLaunch(long_warps=0)


@pytest.mark.triton
def test_select_gumbel_falls_back():
    q, lm = torch.randn(1, 40, 1, 16, device=DEV), torch.randn(1, 4, 1, 16, device=DEV)
    idx, w = hsa_select_triton(q, lm, topk=2, chunk_size=8, gumbel=True)
    assert idx.shape == (1, 40, 1, 2) and (w[idx < 0] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("weighting", ["stick_breaking", "softmax"])
def test_select_gpu_real_shape(weighting):
    _check(Case(B=1, T=8192, Hr=1, dr=1024, C=128, S=64, K=8, weighting=weighting), device="cuda")


@pytest.mark.gpu
def test_select_gpu_bf16_scores_agree():
    # bf16 inputs: products are exact, fp32 sums differ only by order; near-ties may swap, so compare the
    # kept scores' values instead of the ids.
    q = torch.randn(2, 4096, 1, 1024, device="cuda", dtype=torch.bfloat16)
    lm = torch.randn(2, 64, 1, 1024, device="cuda", dtype=torch.bfloat16)
    idx, _w = hsa_select_triton(q, lm, topk=8, chunk_size=64)
    ridx, _rw = hsa_select_naive(q, lm, topk=8, chunk_size=64)
    s = torch.einsum("bthd,bchd->bthc", q.float(), lm.float()) / 32
    ks = torch.gather(s, -1, idx.clamp(min=0).long()).masked_fill(idx < 0, 0).sort(-1).values
    rs = torch.gather(s, -1, ridx.clamp(min=0).long()).masked_fill(ridx < 0, 0).sort(-1).values
    torch.testing.assert_close(ks, rs, rtol=1e-4, atol=1e-4)
    assert (idx == ridx).float().mean() > 0.999
