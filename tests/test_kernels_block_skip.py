"""Block skipping: the visit mask keeps every non-empty tile, drops the empty ones
on block-aligned layouts, and the kernel never touches a dropped tile."""

import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import block_visit_mask, flash_attention, flash_attention_bwd
from longvila_jax.kernels.testing import packed_layout, query_key_layouts, random_qkv


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def nonempty_tiles(q_seg, q_pos, kv_seg, kv_pos, causal, block_q, block_k):
    """Boolean [B, nq, nk] from the dense elementwise mask (numpy)."""
    mask = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
    if causal:
        mask &= kv_pos[:, None, :] <= q_pos[:, :, None]
    batch, q_len, kv_len = mask.shape
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    padded = np.zeros((batch, nq * block_q, nk * block_k), bool)
    padded[:, :q_len, :kv_len] = mask
    return padded.reshape(batch, nq, block_q, nk, block_k).any(axis=(2, 4))


def zigzag(length, ring):
    """Token order of a zigzag layout: rank r holds chunks r and 2R-1-r."""
    chunks = np.arange(length).reshape(2 * ring, -1)
    return np.concatenate([np.concatenate([chunks[r], chunks[2 * ring - 1 - r]]) for r in range(ring)])


@pytest.mark.parametrize("causal", [True, False])
def test_never_drops_a_nonempty_tile(rng, causal):
    for _ in range(5):
        q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, 2, 75, 90, max_segments=4, shuffle=bool(rng.integers(2)))
        visit = np.asarray(block_visit_mask(q_seg, q_pos, kv_seg, kv_pos, causal=causal, block_q=16, block_k=12))
        exact = nonempty_tiles(q_seg, q_pos, kv_seg, kv_pos, causal, 16, 12)
        assert visit.shape == exact.shape
        assert not (exact & ~visit).any()


def test_causal_natural_order_visits_lower_triangle():
    length, block = 256, 32
    pos = np.arange(length)[None]
    seg = np.ones_like(pos)
    visit = np.asarray(block_visit_mask(seg, pos, seg, pos, causal=True, block_q=block, block_k=block))
    n = length // block
    np.testing.assert_array_equal(visit[0], np.tri(n, dtype=bool))
    assert visit.sum() == n * (n + 1) // 2


def test_block_aligned_packed_segments_visit_exactly_the_nonempty_tiles():
    block = 16
    lengths = [48, 32, 64, 16]          # multiples of the block; then 32 padding tokens
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(32, int)])[None]
    pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(32, int)])[None]
    for causal in (True, False):
        visit = np.asarray(block_visit_mask(seg, pos, seg, pos, causal=causal, block_q=block, block_k=block))
        np.testing.assert_array_equal(visit, nonempty_tiles(seg, pos, seg, pos, causal, block, block))
    causal_tiles = sum((n // block) * (n // block + 1) // 2 for n in lengths)
    assert visit.sum() == sum((n // block) ** 2 for n in lengths)   # last loop value: full mask
    visit = np.asarray(block_visit_mask(seg, pos, seg, pos, causal=True, block_q=block, block_k=block))
    assert visit.sum() == causal_tiles


@pytest.mark.parametrize("ring", [2, 4])
def test_zigzag_every_rank_pair_visits_exactly_the_nonempty_tiles(ring):
    length, block = 256, 16
    order = zigzag(length, ring)
    per_rank = length // ring
    seg = np.ones((1, per_rank), np.int32)
    work = []
    for r in range(ring):
        q_pos = order[r * per_rank:(r + 1) * per_rank][None]
        counts = 0
        for s in range(ring):
            kv_pos = order[s * per_rank:(s + 1) * per_rank][None]
            visit = np.asarray(block_visit_mask(seg, q_pos, seg, kv_pos, causal=True, block_q=block, block_k=block))
            np.testing.assert_array_equal(visit, nonempty_tiles(seg, q_pos, seg, kv_pos, True, block, block))
            counts += visit.sum()
        work.append(counts)
    assert len(set(work)) == 1          # the balanced order gives every rank the same work
    n = length // block
    assert sum(work) == n * (n + 1) // 2


def test_kernel_never_reads_skipped_tiles(rng):
    """Keys that only dropped tiles hold are NaN: any visit would leak NaN (0 * NaN)."""
    length, block = 96, 16
    q, k, v = random_qkv(rng, 1, length, length, 4, 2, 64)
    pos = np.arange(length, dtype=np.int32)[None]
    q_seg = np.zeros((1, length), np.int32)
    q_seg[:, :32] = 1                   # real queries: positions 0-31 of sample 1
    kv_seg = np.ones((1, length), np.int32)
    kv_seg[:, 64:80] = 2                # a block of another sample
    kv_seg[:, 80:] = 0                  # a block of padding
    k[:, 32:], v[:, 32:] = np.nan, np.nan   # causal future, other sample, padding
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=pos, kv_positions=pos,
                causal=True, impl="xla", block_q=block, block_k=block)
    out, lse = flash_attention(q, k, v, **mask)
    assert np.isfinite(np.asarray(out)).all()
    dout = rng.standard_normal(q.shape).astype(np.float32)
    dq, dk, dv = flash_attention_bwd(q, k, v, out, lse, dout, **mask)
    assert np.isfinite(np.asarray(dq)).all()
    np.testing.assert_array_equal(np.asarray(dk)[:, 32:], 0.0)
    np.testing.assert_array_equal(np.asarray(dv)[:, 32:], 0.0)


def test_triton_visit_lists_by_hand():
    """Causal, 64 tokens in one segment then 64 of padding, blocks of 32: query block i sees key
    blocks < i whole and block i masked; padding blocks see nothing; lists longest first."""
    from longvila_jax.kernels.triton_backend import Tiles, visit_lists

    seg = np.concatenate([np.ones(64, np.int32), np.zeros(64, np.int32)])[None]
    pos = np.concatenate([np.arange(64, dtype=np.int32), np.zeros(64, np.int32)])[None]
    tiles = Tiles(32, 32, 4, 3)
    q_lists = np.asarray(visit_lists(seg, pos, seg, pos, causal=True, tiles=tiles, resident="q"))
    # [whole, masked, resident, streamed blocks: whole first, then masked, then the unvisited]
    assert q_lists[0, 0, :4].tolist() == [1, 1, 1, 0] and q_lists[0, 0, 4] == 1
    assert q_lists[0, 1, :4].tolist() == [0, 1, 0, 0]
    assert [row[:3].tolist() for row in q_lists[0, 2:]] in ([[0, 0, 2], [0, 0, 3]], [[0, 0, 3], [0, 0, 2]])
    kv_lists = np.asarray(visit_lists(seg, pos, seg, pos, causal=True, tiles=tiles, resident="kv"))
    # key block 0 is seen whole by query block 1 and masked by query block 0
    assert kv_lists[0, 0, :5].tolist() == [1, 1, 0, 1, 0]
    assert kv_lists[0, 1, :4].tolist() == [0, 1, 1, 1]


def test_triton_rejects_tiles_that_do_not_divide_the_padding():
    from longvila_jax.kernels import triton_backend

    with pytest.raises(ValueError, match="powers of two"):
        triton_backend._check_tiles(triton_backend.Tiles(48, 64, 4, 3))
