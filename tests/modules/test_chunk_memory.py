"""Chunk memory: geometry, options, incremental building equals one pass."""

from __future__ import annotations

import pytest
import torch

from hsa_core.modules import ChunkMemory


@pytest.mark.parametrize(
    "options",
    [
        dict(encoder_layers=1, landmark="cls"),
        dict(encoder_layers=2, landmark="mean", encoder_heads=2, encoder_mlp_hidden=48),
        dict(encoder_layers=0, landmark="mean", chunk_norm=False),
        dict(encoder_layers=1, landmark="cls", k_norm=True, retrieval_heads=2, kv_heads=2),
    ],
)
def test_shapes_and_gradients(options):
    mem = ChunkMemory(32, chunk_size=5, head_dim=8, landmark_dim=16, **options)
    h = torch.randn(2, 23, 32, requires_grad=True)
    st = mem(h)
    H, Hr = mem.kv_heads, mem.retrieval_heads
    assert st.k.shape == st.v.shape == (2, 20, H, 8)
    assert st.landmarks.shape == (2, 4, Hr, 16 // Hr)
    assert st.pending.shape == (2, 3, 32) and st.num_tokens == 23 and st.num_chunks == 4
    (st.k.sum() + st.v.sum() + st.landmarks.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mem.parameters())
    # Tokens of the incomplete last chunk do not reach the memory.
    assert torch.count_nonzero(h.grad[:, 20:]) == 0


def test_chunks_are_encoded_independently():
    mem = ChunkMemory(16, chunk_size=4, head_dim=8, encoder_layers=1).eval()
    h = torch.randn(1, 12, 16)
    st = mem(h)
    h2 = h.clone()
    h2[:, 4:8] += 1.0  # change chunk 1 only
    st2 = mem(h2)
    assert torch.equal(st.k[:, :4], st2.k[:, :4]) and torch.equal(st.k[:, 8:], st2.k[:, 8:])
    assert not torch.allclose(st.k[:, 4:8], st2.k[:, 4:8])
    assert torch.equal(st.landmarks[:, 0], st2.landmarks[:, 0])


@pytest.mark.parametrize("splits", [[1] * 19, [3, 7, 9], [4, 4, 11], [19]])
def test_incremental_equals_one_pass(splits):
    mem = ChunkMemory(16, chunk_size=4, head_dim=8, encoder_layers=1).eval()
    h = torch.randn(2, 19, 16)
    full = mem(h)
    st, t = None, 0
    for n in splits:
        st = mem(h[:, t:t + n], st)
        t += n
    assert st.num_tokens == full.num_tokens == 19
    for a, b in [(st.k, full.k), (st.v, full.v), (st.landmarks, full.landmarks), (st.pending, full.pending)]:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("offload", [False, True], ids=["on-device", "offloaded"])
def test_state_keeps_no_view_of_the_input(offload: bool) -> None:
    """The carried state holds only its own tensors: a view (the pending tokens sliced from the
    segment) would keep the whole segment's hidden states alive for as long as the cache lives."""
    mem = ChunkMemory(16, chunk_size=4, head_dim=8, encoder_layers=1).eval()
    st = mem.empty_state(1, device="cpu", dtype=torch.float32, offload=offload)
    with torch.no_grad():
        for n in (23, 9, 2):  # 3, then 0, then 2 pending tokens
            st = mem(torch.randn(1, n, 16), st)
            held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (st.k, st.v, st.pending)}
            own = sum(t.numel() * t.element_size() for t in (st.k, st.v, st.pending))
            assert sum(held.values()) <= own, (n, sum(held.values()), own)


def test_empty_state_and_errors():
    mem = ChunkMemory(16, chunk_size=4, head_dim=8)
    st = mem.empty_state(3)
    assert st.num_chunks == 0 and st.k.shape == (3, 0, 1, 8) and st.num_tokens == 0
    with pytest.raises(ValueError, match="needs an encoder"):
        ChunkMemory(16, encoder_layers=0, landmark="cls")
    with pytest.raises(ValueError, match="landmark must be"):
        ChunkMemory(16, landmark="max")
    with pytest.raises(ValueError, match="retrieval_heads"):
        ChunkMemory(16, landmark_dim=10, retrieval_heads=3)


def test_ramba_memory_parameter_count():
    """1-layer encoder + K/V + landmark projection of RAMba-370M (d=1024): about 13.8M."""
    mem = ChunkMemory(1024, chunk_size=64, kv_heads=1, head_dim=64, encoder_layers=1, landmark="cls")
    n = sum(p.numel() for p in mem.parameters())
    assert 13.0e6 < n < 14.5e6, n


def test_encoder_gqa_equals_repeated_kv_heads() -> None:
    """4 query heads over 2 KV heads == 4 full heads whose k/v projections repeat each KV head twice."""
    from hsa_core.modules.encoder import ChunkEncoder

    gqa = ChunkEncoder(32, layers=1, heads=4, kv_heads=2, qkv_bias=True).double()
    full = ChunkEncoder(32, layers=1, heads=4, qkv_bias=True).double()
    full.load_state_dict({k: v for k, v in gqa.state_dict().items() if ".qkv." not in k}, strict=False)
    hd = 8
    with torch.no_grad():
        for p_gqa, p_full in ((gqa.layers[0].qkv.weight, full.layers[0].qkv.weight),
                              (gqa.layers[0].qkv.bias, full.layers[0].qkv.bias)):
            q, k, v = p_gqa.split([4 * hd, 2 * hd, 2 * hd])
            rep = [t.unflatten(0, (2, hd)).repeat_interleave(2, 0).flatten(0, 1) for t in (k, v)]
            p_full.copy_(torch.cat([q, *rep]))
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), full(x))
    assert gqa.layers[0].qkv.weight.shape == (64, 32) and torch.count_nonzero(gqa.layers[0].qkv.bias) == 0
