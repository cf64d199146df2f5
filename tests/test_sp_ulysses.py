"""Ulysses routing, exactly: rank-coded inputs make any misrouted head or sequence slice visible."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from longvila_jax.sharding import make_mesh
from longvila_jax.sp.ulysses import gather_tokens, heads_to_seq, kv_head_repeats, seq_to_heads

SEQ_SHARD = P(None, ("ring", "ulysses"), None, None)  # sequence pieces, ring major
HEAD_SHARD = P(None, "ring", "ulysses", None)  # ring member's whole slice, one head group


def rank_coded(batch, length, heads, dim):
    """x[b, s, h, d] = 1e6*b + 1e3*s + 10*h + d: exact in float32 for the sizes used here."""
    b, s, h, d = np.meshgrid(np.arange(batch), np.arange(length), np.arange(heads), np.arange(dim), indexing="ij")
    return jnp.asarray(1e6 * b + 1e3 * s + 10 * h + d, jnp.float32)


@pytest.mark.parametrize("ring, ulysses", [(1, 8), (2, 4), (4, 2)])
def test_seq_to_heads_routes_every_slice_and_round_trips(ring, ulysses):
    mesh = make_mesh(ring=ring, ulysses=ulysses)
    x = rank_coded(2, 64, 8, 4)

    def both(piece):
        heads = seq_to_heads(piece)
        return heads, heads_to_seq(heads)

    heads, back = jax.jit(jax.shard_map(both, mesh=mesh, in_specs=SEQ_SHARD, out_specs=(HEAD_SHARD, SEQ_SHARD)))(x)
    # Device (r, u) must hold ring slice r (in device order) of head group u:
    # read back through HEAD_SHARD, that is exactly the global array.
    assert np.array_equal(np.asarray(heads), np.asarray(x))
    assert np.array_equal(np.asarray(back), np.asarray(x))
    # and per device: check one shard's contents directly
    shard = heads.addressable_shards[-1]
    r, u = ring - 1, ulysses - 1
    want = np.asarray(x)[:, r * 64 // ring:(r + 1) * 64 // ring, u * 8 // ulysses:(u + 1) * 8 // ulysses]
    assert np.array_equal(np.asarray(shard.data), want)


def test_gather_tokens_gives_each_ring_member_its_slice():
    mesh = make_mesh(ring=2, ulysses=4)
    ids = jnp.arange(2 * 64, dtype=jnp.int32).reshape(2, 64)
    spec = P(None, ("ring", "ulysses"))
    gathered = jax.jit(jax.shard_map(gather_tokens, mesh=mesh, in_specs=spec, out_specs=spec))(ids)
    # device (r, u) holds all of ring slice r: [B, 32] each, 8 devices side by side
    blocks = np.asarray(gathered).reshape(2, 2, 4, 32)
    for r in range(2):
        for u in range(4):
            assert np.array_equal(blocks[:, r, u], np.asarray(ids)[:, r * 32:(r + 1) * 32]), (r, u)


@pytest.mark.parametrize("kv_heads, ulysses, want", [(8, 4, 1), (2, 4, 2), (1, 8, 8), (3, 2, 2), (6, 4, 2), (4, 8, 2)])
def test_kv_head_repeats_is_minimal(kv_heads, ulysses, want):
    assert kv_head_repeats(kv_heads, ulysses) == want


@pytest.mark.parametrize("q_heads, kv_heads, ulysses", [(8, 2, 4), (8, 1, 8), (8, 8, 2), (6, 3, 2), (12, 6, 4),
                                                        (16, 4, 8)])
def test_repeated_kv_heads_serve_the_right_query_heads(q_heads, kv_heads, ulysses):
    """After the repeat and the split, each device's local GQA grouping reads the global K/V head."""
    rep = kv_head_repeats(kv_heads, ulysses)
    kv_rep = kv_heads * rep
    assert kv_rep % ulysses == 0 and q_heads % kv_rep == 0
    q_local, kv_local = q_heads // ulysses, kv_rep // ulysses
    for u in range(ulysses):
        for h_local in range(q_local):
            h = u * q_local + h_local
            kv_rep_head = u * kv_local + h_local // (q_local // kv_local)
            assert kv_rep_head // rep == h // (q_heads // kv_heads), (u, h)


def test_kv_repeat_then_all_to_all_is_exact():
    """GQA 8/2 on ulysses 4: device u receives copy u of the repeated heads, i.e. kv head u // 2."""
    mesh = make_mesh(ring=2, ulysses=4)
    k = rank_coded(1, 32, 2, 4)

    def route(piece):
        return seq_to_heads(jnp.repeat(piece, kv_head_repeats(2, 4), axis=2))

    got = jax.jit(jax.shard_map(route, mesh=mesh, in_specs=SEQ_SHARD, out_specs=HEAD_SHARD))(k)
    assert np.array_equal(np.asarray(got), np.repeat(np.asarray(k), 2, axis=2))
    assert math.lcm(2, 4) == got.shape[2]
