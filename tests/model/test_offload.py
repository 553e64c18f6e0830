"""Host-offloaded chunk memory: the K/V of complete chunks in host memory and only the
selected chunks copied to the compute device give exactly the logits and tokens of the on-device
memory (on CPU, bit for bit), for segment-wise prefill with carried state, decoding, shared and
multi-hop selections, batches of prompts of different lengths, and the edge cases (nothing
selected, a single chunk, a prompt shorter than one chunk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsa_core.errors import SpecError
from hsa_core.generation import RunStats, generate_batch, prefill, stream_generate
from hsa_core.layout import load_spec, resolve
from hsa_core.model import HSALanguageModel
from hsa_core.modules import ChunkStore, offload

ROOT = Path(__file__).parents[2]
TINY = ROOT / "tests" / "app" / "training" / "tiny.yaml"
# Multi-hop (one selection per HSA layer), 2 KV heads with 2 retrieval heads, memory from the embeddings.
MULTIHOP = (ROOT / "bench" / "train" / "layouts" / "ramba-demo-sm.yaml",
            ["model.d_model=32", "model.mlp_hidden=64", "memories.mid.chunk_size=8", "memories.mid.head_dim=8",
             "retrieval.sel.retrieval_dim=16", "retrieval.sel.topk=3", "defaults.mamba2.headdim=16",
             "defaults.mamba2.d_state=8", "defaults.mamba2.chunk_size=16", "symbols.H.num_heads=4"])

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(which: str = "tiny", **overrides: str) -> HSALanguageModel:
    torch.manual_seed(0)
    path, sets = (TINY, []) if which == "tiny" else MULTIHOP
    spec = load_spec(path, overrides=[*sets, *(f"{k}={v}" for k, v in overrides.items())])
    return HSALanguageModel.from_spec(spec).eval()


def _segments(model: HSALanguageModel, ids: torch.Tensor, seg: int, offload: bool) -> tuple[torch.Tensor, object]:
    cache = model.init_cache(ids.shape[0], offload=offload)
    out = []
    with torch.no_grad():
        for s in range(0, ids.shape[1], seg):
            o = model(ids[:, s:s + seg], cache, return_cache=True)
            cache = o.cache
            out.append(o.logits)
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("which", ["tiny", "multihop"])
@pytest.mark.parametrize("seg", [5, 8, 19])
def test_segmentwise_prefill_with_carried_state_is_exact(which: str, seg: int) -> None:
    model = _model(which)
    ids = torch.randint(0, 96, (3, 77), generator=torch.Generator().manual_seed(seg))
    ref, ref_cache = _segments(model, ids, seg, offload=False)
    got, cache = _segments(model, ids, seg, offload=True)
    assert torch.equal(got, ref)
    mem = cache.memories["mid"]
    assert mem.offloaded and mem.num_chunks == 77 // 8 and ref_cache.memories["mid"].num_chunks == 77 // 8
    assert cache.host_nbytes() >= 2 * 3 * (77 // 8) * 8 * mem.k.shape[2] * mem.k.shape[3] * 4
    assert mem.k.shape[1] <= -(-seg // 8) * 8  # resident: only the chunks of the latest call
    assert cache.nbytes() < ref_cache.nbytes() + mem.store.landmarks.nbytes()


@pytest.mark.parametrize("which", ["tiny", "multihop"])
@pytest.mark.parametrize("offload", [False, True], ids=["on-device", "offloaded"])
def test_carried_cache_keeps_alive_only_its_own_tensors(which: str, offload: bool) -> None:
    """Between segments the cache holds its states, not views into the segment's activations (a sliced
    conv state, SSM state or pending chunk pinned whole segments: 157 MiB against 13 MiB carried by
    the demo RAMba at 4K-token segments, measured on CPU)."""
    model = _model(which)
    ids = torch.randint(0, 96, (1, 61), generator=torch.Generator().manual_seed(1))
    _, cache = _segments(model, ids, 29, offload=offload)
    tensors = [t for s in cache.mixer_states if s for t in s.values()]
    tensors += [t for m in cache.memories.values() for t in (m.k, m.v, m.pending)]
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    assert sum(held.values()) <= sum(t.numel() * t.element_size() for t in tensors)


def test_one_gather_per_shared_selection(monkeypatch) -> None:
    """RAMba's wiring: the HSA layers sharing a selection share one copy of the selected chunks."""
    model = _model("tiny", layers="'M H M H M'")  # two HSA layers over one shared selection
    calls = []
    real = offload.gather_selected

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    import hsa_core.modules.retrieval as retrieval

    monkeypatch.setattr(retrieval, "gather_selected", counting)
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    ref, _ = _segments(model, ids, 10, offload=False)
    assert not calls
    got, _ = _segments(model, ids, 10, offload=True)
    assert torch.equal(got, ref) and len(calls) == 4  # 4 segments, one gather each for both layers


@pytest.mark.triton
@pytest.mark.parametrize("which", ["tiny", pytest.param("multihop", marks=pytest.mark.slow)])  # multihop: 18 s
def test_offload_through_the_gather_kernel(which: str, monkeypatch) -> None:
    """The store's copy-in through the Triton row gather (here interpreted on CPU; on CUDA it reads
    pinned host memory): the same logits as the on-device memory, which runs the same kernels."""
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter test (test_offload_on_cuda covers CUDA)")
    monkeypatch.setenv("HSA_BACKEND", "triton")
    model = _model(which, **({"memories.mid.head_dim": "16"} if which == "multihop" else {}))
    ids = torch.randint(0, 96, (2, 50), generator=torch.Generator().manual_seed(5))
    ref, _ = _segments(model, ids, 17, offload=False)
    got, cache = _segments(model, ids, 17, offload=True)
    assert torch.equal(got, ref) and cache.take_gather_stats().calls > 0


@pytest.mark.parametrize("which", ["tiny", "multihop"])
def test_landmarks_in_host_memory_give_the_same_logits(which: str, monkeypatch) -> None:
    """``HSA_OFFLOAD_LANDMARKS=host``: the landmarks live in host memory too and each selection reads them a
    window at a time (windows of 3 chunks here): the same logits, cache rows and decoding as the memory
    on the device; the landmarks count as host bytes, not device bytes."""
    monkeypatch.setattr(offload, "LANDMARK_WINDOW_CHUNKS", 3)
    model = _model(which)
    ids = torch.randint(0, 96, (2, 77), generator=torch.Generator().manual_seed(9))
    ref, ref_cache = _segments(model, ids, 19, offload=False)
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", "host")
    got, cache = _segments(model, ids, 19, offload=True)
    assert torch.equal(got, ref)
    store = cache.memories["mid"].store
    assert store.host_landmarks and store.device_nbytes() == 0
    assert store.host_nbytes() >= store.landmarks.nbytes() > 0
    one, one_ref = cache.select(torch.tensor([1])), ref_cache.select(torch.tensor([1]))
    with torch.no_grad():
        assert torch.equal(model(ids[1:, :4], one).logits, model(ids[1:, :4], one_ref).logits)


def test_landmark_mode_comes_from_the_environment(monkeypatch) -> None:
    from hsa_core.errors import UsageError

    monkeypatch.delenv("HSA_OFFLOAD_LANDMARKS", raising=False)
    assert offload.landmark_mode() == "device" and not ChunkStore.create(8, "cpu").host_landmarks
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", " Host ")
    assert ChunkStore.create(8, "cpu").host_landmarks
    assert not ChunkStore.create(8, "cpu", host_landmarks=False).host_landmarks  # an explicit choice wins
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", "cpu")
    with pytest.raises(UsageError, match="HSA_OFFLOAD_LANDMARKS='cpu' is not one of device, host"):
        ChunkStore.create(8, "cpu")


@pytest.mark.slow  # 11 s under the interpreter
@pytest.mark.triton
def test_landmark_windows_through_the_kernel(monkeypatch) -> None:
    """The same with the interpreted selection kernel scoring each window and merging their top-k: the same
    chunks, and logits equal to rounding (the merged windows' weights come from the reference fusion
    formula in torch, the one-scan weights from the kernel's epilogue)."""
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter test (test_offload_on_cuda covers CUDA)")
    monkeypatch.setenv("HSA_BACKEND", "triton")
    monkeypatch.setattr(offload, "LANDMARK_WINDOW_CHUNKS", 2)
    model = _model("multihop", **{"memories.mid.head_dim": "16"})
    ids = torch.randint(0, 96, (1, 50), generator=torch.Generator().manual_seed(6))
    ref, _ = _segments(model, ids, 17, offload=False)
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", "host")
    got, cache = _segments(model, ids, 17, offload=True)
    assert cache.memories["mid"].store.host_landmarks
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_landmark_windows_share_one_device_buffer(monkeypatch) -> None:
    """With a copy stream (CUDA), every window of host landmarks is copied into one buffer that the store
    allocates per call: the device holds one window whoever keeps a reference to the previous one. The
    copies themselves run here on the CPU, with the stream's wait stubbed."""
    store = ChunkStore.create(4, "cpu", host_landmarks=True)
    lm = torch.randn(2, 7, 3, 5)  # (B, C, H_r, d_rh)
    store.append(torch.randn(2, 28, 1, 2), torch.randn(2, 28, 1, 2), lm)
    monkeypatch.setattr(store, "_copy_stream", object())  # the CUDA branch, on CPU tensors
    monkeypatch.setattr(store, "_stream_wait_appends", lambda chunks: None)
    windows = []
    for c0, window in store.landmark_windows(7, window_chunks=3):
        torch.testing.assert_close(window, lm[:, c0:c0 + window.shape[1]], rtol=0, atol=0)
        windows.append((c0, window.shape[1], window.untyped_storage().data_ptr()))
    assert [w[:2] for w in windows] == [(6, 1), (3, 3), (0, 3)]  # newest first
    assert len({w[2] for w in windows}) == 1  # one buffer for all three
    assert windows[0][2] != store.landmarks.data.untyped_storage().data_ptr()  # a copy, not the host rows


def test_gather_mode_comes_from_the_environment(monkeypatch) -> None:
    from hsa_core.errors import UsageError

    monkeypatch.delenv("HSA_OFFLOAD_GATHER", raising=False)
    assert offload.gather_mode() == "device"
    monkeypatch.setenv("HSA_OFFLOAD_GATHER", " Host ")
    assert offload.gather_mode() == "host"
    model = _model("tiny")
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(2))
    assert torch.equal(_segments(model, ids, 10, offload=True)[0], _segments(model, ids, 10, offload=False)[0])
    monkeypatch.setenv("HSA_OFFLOAD_GATHER", "gpu")
    with pytest.raises(UsageError, match="HSA_OFFLOAD_GATHER='gpu' is not one of device, host"):
        _segments(model, ids, 10, offload=True)


def test_gather_statistics_count_every_copy_once(monkeypatch) -> None:
    """The store counts its host -> device gathers (calls, chunks, bytes, host seconds); taking them
    zeroes them, so RunStats adds a cache's gathers once even when it finishes on it twice (prefill,
    then decode), and the footprint line reports them."""
    model = _model("tiny", layers="'M H M H M'")  # one shared selection: one gather per call
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    _, cache = _segments(model, ids, 10, offload=True)
    mem = cache.memories["mid"]
    chunk_bytes = 2 * mem.store.k.data[0, 0].numel() * mem.store.k.data.element_size()  # K and V of one chunk
    got = cache.take_gather_stats()
    # segments 2-4 read chunks on the host (the first segment's chunks are still resident); segment 1 none
    assert 1 <= got.calls <= 4 and got.chunks >= 2 * got.calls  # both rows, at least one chunk each
    assert got.bytes == got.chunks * chunk_bytes and got.copy_seconds >= 0 and got.sync_seconds >= 0
    assert cache.take_gather_stats().calls == 0  # taken: nothing left
    copies = []
    real = ChunkStore.gather

    def counting(self, rows, chunk_ids):
        copies.append(rows.numel() * chunk_ids.shape[1])
        return real(self, rows, chunk_ids)

    monkeypatch.setattr(ChunkStore, "gather", counting)
    stats = RunStats()
    prompt = ids[0].tolist()
    list(stream_generate(model, prompt, max_new_tokens=6, segment_len=10, offload=True, stats=stats))
    assert stats.gathers.calls == len(copies) > 0 and stats.gathers.chunks == sum(copies)
    assert stats.gathers.bytes == sum(copies) * chunk_bytes
    assert "gathered" in stats.summary()
    plain = RunStats()
    list(stream_generate(model, prompt, max_new_tokens=6, segment_len=10, offload=False, stats=plain))
    assert plain.gathers.calls == 0 and "gathered" not in plain.summary()


LANDMARKS = [pytest.param("device", id="landmarks-on-device"), pytest.param("host", id="landmarks-in-host")]


@pytest.mark.parametrize("landmarks", LANDMARKS)
@pytest.mark.parametrize("which", ["tiny", "multihop"])
def test_generate_and_stream_are_exact(which: str, landmarks: str, monkeypatch) -> None:
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", landmarks)
    monkeypatch.setattr(offload, "LANDMARK_WINDOW_CHUNKS", 2)
    model = _model(which)
    prompt = torch.randint(0, 96, (2, 45), generator=torch.Generator().manual_seed(1))
    ids_ref, lg_ref = model.generate(prompt, 20, return_logits=True, offload=False)
    ids_off, lg_off = model.generate(prompt, 20, return_logits=True, offload=True)
    assert torch.equal(ids_off, ids_ref) and torch.equal(lg_off, lg_ref)
    stats = RunStats()
    got = list(stream_generate(model, prompt[0].tolist(), max_new_tokens=20, segment_len=16, offload=True,
                               stats=stats))
    assert got == list(stream_generate(model, prompt[0].tolist(), max_new_tokens=20, segment_len=16, offload=False))
    assert stats.offload and stats.host_bytes > 0 and stats.prefill_tokens == 45 and stats.decode_tokens == 19
    assert stats.gpu_peak_bytes is None and "chunk K/V in host memory" in stats.summary()
    last_off, cache_off = prefill(model, prompt, segment_len=16, offload=True)  # under inference_mode
    last_ref, cache_ref = prefill(model, prompt, segment_len=16, offload=False)
    assert torch.equal(last_off, last_ref)
    more = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # continued outside inference mode: the store's buffers accept the new chunks
        assert torch.equal(model(more, cache_off).logits, model(more, cache_ref).logits)
    with torch.inference_mode():  # the same without growing the buffers (reserved up front)
        cache_off = model(prompt, model.init_cache(2, offload=True, reserve_tokens=100), return_cache=True).cache
        cache_ref = model(prompt, model.init_cache(2, offload=False), return_cache=True).cache
    with torch.no_grad():
        assert torch.equal(model(more, cache_off).logits, model(more, cache_ref).logits)


@pytest.mark.parametrize("landmarks", LANDMARKS)
@pytest.mark.parametrize("which", ["tiny", "multihop"])
def test_ragged_batch(which: str, landmarks: str, monkeypatch) -> None:
    """Prompts of different lengths in one batch: offloaded == on-device exactly, and each row's greedy
    continuation is that of its prompt alone (the padding never reaches a real position)."""
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", landmarks)
    monkeypatch.setattr(offload, "LANDMARK_WINDOW_CHUNKS", 2)
    model = _model(which)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (3, 26, 8, 26, 61)]
    ref, ref_lg = generate_batch(model, prompts, max_new_tokens=9, segment_len=16, offload=False, return_logits=True)
    got, got_lg = generate_batch(model, prompts, max_new_tokens=9, segment_len=16, offload=True, return_logits=True)
    assert got == ref and all(torch.equal(a, b) for a, b in zip(got_lg, ref_lg))
    for p, toks, lg in zip(prompts, got, got_lg):
        alone, alone_lg = model.generate(torch.tensor([p]), 9, return_logits=True)
        assert toks == alone[0, len(p):].tolist()
        torch.testing.assert_close(lg, alone_lg[0], rtol=1e-5, atol=1e-5)  # batch of 1 vs B: BLAS rounding
    eos = ref[4][2]
    stopped = generate_batch(model, prompts, max_new_tokens=9, segment_len=16, offload=True, eos_id=eos)
    assert stopped[4] == ref[4][:3]


@pytest.mark.parametrize("length", [1, 5, 8, 9, 16])
def test_short_prompts_single_chunk(length: int) -> None:
    """Shorter than one chunk (nothing to select), exactly one chunk, one chunk and a token."""
    model = _model()
    prompt = torch.randint(0, 96, (1, length), generator=torch.Generator().manual_seed(length))
    ref = model.generate(prompt, 12, return_logits=True, offload=False)
    got = model.generate(prompt, 12, return_logits=True, offload=True)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def _store_with(chunks: torch.Tensor) -> ChunkStore:
    store = ChunkStore.create(4, "cpu")
    B, C = chunks.shape[:2]
    store.append(chunks.reshape(B, C * 4, 1, 2), chunks.reshape(B, C * 4, 1, 2) + 100,
                 torch.zeros(B, C, 1, 3))
    return store


def test_gather_selected_renumbers_into_the_compact_buffer() -> None:
    B, C, S = 2, 9, 4
    chunks = torch.randn(B, C, S, 1, 2)
    resident = 3  # chunks 6, 7, 8 are also on the device
    store = _store_with(chunks)
    res_k = chunks[:, C - resident:].reshape(B, resident * S, 1, 2)
    idx = torch.tensor([[[5, 2, -1], [8, 5, 0]], [[7, -1, -1], [6, 3, 1]]], dtype=torch.int32)[:, :, None]
    k, v, new = offload.gather_selected(store, res_k, res_k + 100, C, idx)
    assert new.dtype == idx.dtype and new.shape == idx.shape and torch.equal(new < 0, idx < 0)
    # row 0 needs host chunks {0, 2, 5}, row 1 {1, 3}: 3 host slots (row 1 padded), then the 3 resident
    assert k.shape == (B, (3 + resident) * S, 1, 2)
    kc, vc = k.view(B, -1, S, 1, 2), v.view(B, -1, S, 1, 2)
    for b in range(B):
        for old, now in zip(idx[b].flatten().tolist(), new[b].flatten().tolist()):
            if old >= 0:
                assert torch.equal(kc[b, now], chunks[b, old]) and torch.equal(vc[b, now], chunks[b, old] + 100)


def test_gather_selected_nothing_selected() -> None:
    chunks = torch.randn(1, 3, 4, 1, 2)
    store = _store_with(chunks)
    empty = torch.zeros(1, 0, 1, 2)
    idx = torch.full((1, 5, 1, 2), -1, dtype=torch.int32)
    k, v, new = offload.gather_selected(store, empty, empty, 3, idx)
    assert torch.equal(new, idx) and k.shape == v.shape == (1, 4, 1, 2)  # one chunk, never read (as on the device)
    k, v, new = offload.gather_selected(ChunkStore.create(4, "cpu"), empty, empty, 0, idx)
    assert k.shape == v.shape == (1, 0, 1, 2) and torch.equal(new, idx)


def test_growable_buffers_grow_amortised() -> None:
    buf = offload.GrowableBuffer(torch.zeros(2, 1, 3), dim=1, device=torch.device("cpu"))
    caps = set()
    for i in range(100):
        buf.append(torch.full((2, 1, 3), float(i)))
        caps.add(buf.capacity)
    assert buf.view().shape == (2, 100, 3) and torch.equal(buf.view()[0, :, 0], torch.arange(100.0))
    assert len(caps) <= 8  # doubling: log2(100) reallocations, not one per append


def test_layout_flag_and_errors() -> None:
    raw = load_spec(TINY, overrides=["memories.mid.offload=true"])
    spec = resolve(raw)
    assert spec["memories"]["mid"]["offload"] is True and resolve(spec) == spec
    assert resolve(load_spec(TINY))["memories"]["mid"]["offload"] is False
    with pytest.raises(SpecError, match=r"memories\.mid\.offload"):
        resolve(load_spec(TINY, overrides=["memories.mid.offload=sometimes"]))
    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(spec).eval()
    ids = torch.randint(0, 96, (1, 30))
    with torch.no_grad():
        out = model(ids, return_cache=True)  # the layout's flag: offloaded at inference
        assert out.cache.memories["mid"].offloaded
        ref = model(ids, model.init_cache(1, offload=False), return_cache=True)
        assert torch.equal(out.logits, ref.logits)
        # an offloaded cache is continued in place: continuing an older state again is refused
        a = model(ids[:, :10], model.init_cache(1), return_cache=True).cache
        model(ids[:, 10:20], a, return_cache=True)
        with pytest.raises(RuntimeError, match="continued once"):
            model(ids[:, 10:20], a, return_cache=True)
    model.train()
    with pytest.raises(RuntimeError, match="for inference"):
        model(ids, model.init_cache(1, offload=True))
    model.eval()
    # with gradients (training), the layout's flag is not applied: the memory stays on the device
    logits = model(ids).logits
    logits.sum().backward()
    no_memory = HSALanguageModel.from_spec(load_spec(ROOT / "bench" / "train" / "layouts" / "mamba2-demo.yaml",
                                                     overrides=["model.d_model=32"]))
    with pytest.raises(ValueError, match="no chunk memory"):
        no_memory.init_cache(1, offload=True)
    with pytest.raises(ValueError, match="cannot be moved"):
        model.init_cache(1, offload=True).to(torch.float64)


def test_select_rows_of_an_offloaded_cache() -> None:
    model = _model()
    ids = torch.randint(0, 96, (3, 40), generator=torch.Generator().manual_seed(4))
    _, cache = _segments(model, ids, 16, offload=True)
    _, ref = _segments(model, ids, 16, offload=False)
    one, one_ref = cache.select(torch.tensor([2, 0])), ref.select(torch.tensor([2, 0]))
    nxt = ids[[2, 0], :5]
    with torch.no_grad():
        assert torch.equal(model(nxt, one).logits, model(nxt, one_ref).logits)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("which", ["tiny", "multihop"])
def test_offload_on_cuda(which: str, dtype: torch.dtype, monkeypatch) -> None:
    """Pinned host buffers, the copy stream and its events, buffer growth with copies in flight (no
    reservation), the Triton kernels on the gathered chunks: the same logits as the on-device memory
    within the kernels' own tolerance (fp32: tight; the compact buffer changes no arithmetic)."""
    # the Triton kernels take head dims of 16 to 256 (the CPU tests keep the multi-hop model's 8)
    model = _model(which, **({"memories.mid.head_dim": "16"} if which == "multihop" else {})).cuda()
    ids = torch.randint(0, 96, (2, 333), generator=torch.Generator().manual_seed(7)).cuda()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        ref, _ = _segments(model, ids, 37, offload=False)
        got, cache = _segments(model, ids, 37, offload=True)
    mem = cache.memories["mid"]
    assert mem.store is not None and mem.store.k.data.is_pinned() and mem.landmarks.is_cuda
    gathered = cache.take_gather_stats()
    assert gathered.calls > 0 and gathered.device_reads == gathered.calls  # the GPU read the pinned chunks
    monkeypatch.setenv("HSA_OFFLOAD_GATHER", "host")  # through the CPU staging buffer: the same chunks
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        staged, staged_cache = _segments(model, ids, 37, offload=True)
    assert torch.equal(staged, got) and staged_cache.take_gather_stats().device_reads == 0
    monkeypatch.delenv("HSA_OFFLOAD_GATHER")
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    else:
        assert (got - ref).abs().mean() < 0.02 * ref.abs().mean()
    monkeypatch.setenv("HSA_OFFLOAD_LANDMARKS", "host")  # landmarks in pinned host memory, read in windows
    monkeypatch.setattr(offload, "LANDMARK_WINDOW_CHUNKS", 8)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        windowed, windowed_cache = _segments(model, ids, 37, offload=True)
    store = windowed_cache.memories["mid"].store
    assert store.landmarks.data.is_pinned() and store.device_nbytes() == 0
    # the same chunks; the merged windows' weights come from the torch fusion formula (rounding apart)
    if dtype == torch.float32:
        torch.testing.assert_close(windowed, got, rtol=1e-5, atol=1e-5)
    else:
        assert (windowed - got).abs().mean() < 0.01 * got.abs().mean()
    monkeypatch.delenv("HSA_OFFLOAD_LANDMARKS")
    prompts = [ids[0, :n].tolist() for n in (5, 70, 141)]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        a = generate_batch(model, prompts, max_new_tokens=8, segment_len=32, offload=True)
        b = generate_batch(model, prompts, max_new_tokens=8, segment_len=32, offload=False)
    if dtype == torch.float32:
        assert a == b
    stats = RunStats()
    list(stream_generate(model, prompts[2], max_new_tokens=4, offload=True, stats=stats))
    assert stats.gpu_peak_bytes and stats.host_bytes > 0 and stats.gathers.calls > 0


def test_evaluate_reports_the_footprint_and_follows_the_layout() -> None:
    """``evaluate`` with offload=None uses the layout's flag; per length it records the host bytes of the
    offloaded K/V and the prefill speed; the predictions equal the on-device ones."""
    from hsa_app.evaluation import evaluate
    from hsa_app.tasks import make_task

    torch.manual_seed(0)
    model = HSALanguageModel.from_spec(load_spec(TINY, overrides=["memories.mid.offload=true"])).eval()
    task = make_task("passkey", vocab_size=96, min_gap=16)
    runs = {off: evaluate(model, task, [96, 200], [0.5], samples=3, segment_len=40, device="cpu", offload=off)
            for off in (None, False)}
    on_layout, on_device = runs[None], runs[False]
    assert [c.token_accuracy for c in on_layout.cells] == [c.token_accuracy for c in on_device.cells]
    fp = on_layout.meta["footprint"]["200"]
    assert fp["offload"] and fp["host_bytes"] > 0 and fp["prefill_tokens"] == 3 * 200 and fp["prefill_tokens_per_s"] > 0
    assert not on_device.meta["footprint"]["200"]["offload"] and on_device.meta["footprint"]["200"]["host_bytes"] == 0
