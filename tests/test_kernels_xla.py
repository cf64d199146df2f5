"""The xla backend against the dense float32 reference: forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import flash_attention, reference_attention
from longvila_jax.kernels.testing import packed_layout, query_key_layouts, random_qkv, rel_err

TOL = 1e-5


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"seed={seed}")  # shown by pytest when the test fails
    return np.random.default_rng(seed)


def assert_lse_close(lse, ref_lse):
    lse, ref_lse = np.asarray(lse), np.asarray(ref_lse)
    empty = np.isneginf(ref_lse)
    np.testing.assert_array_equal(np.isneginf(lse), empty)
    assert np.isfinite(lse[~empty]).all()
    assert rel_err(lse[~empty], ref_lse[~empty]) <= TOL


def loss_of(attention):
    """A scalar that weighs every output element and every finite lse differently."""
    def loss(q, k, v, out_weight, lse_weight):
        out, lse = attention(q, k, v)
        lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
        return jnp.sum(out.astype(jnp.float32) * out_weight) + jnp.sum(lse * lse_weight)
    return loss


def check_against_reference(rng, q, k, v, mask_kwargs, block_q, block_k):
    kernel = lambda q, k, v: flash_attention(q, k, v, **mask_kwargs, impl="xla",
                                             block_q=block_q, block_k=block_k)
    reference = lambda q, k, v: reference_attention(q, k, v, **mask_kwargs)
    out, lse = jax.jit(kernel)(q, k, v)
    ref_out, ref_lse = reference(q, k, v)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == jnp.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert rel_err(out, ref_out) <= TOL
    assert_lse_close(lse, ref_lse)

    out_weight = rng.standard_normal(q.shape).astype(np.float32)
    lse_weight = rng.standard_normal(lse.shape).astype(np.float32)
    grads = jax.jit(jax.grad(loss_of(kernel), argnums=(0, 1, 2)))(q, k, v, out_weight, lse_weight)
    ref_grads = jax.grad(loss_of(reference), argnums=(0, 1, 2))(q, k, v, out_weight, lse_weight)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.shape == ref_g.shape and np.isfinite(np.asarray(g)).all(), name
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))
    return out, lse, grads


# (batch, q_len, kv_len, q_heads, kv_heads, head_dim, layout, causal, block_q, block_k)
CASES = [
    (2, 100, 100, 4, 4, 64, "plain", True, 32, 48),
    (2, 100, 100, 4, 4, 64, "plain", False, 32, 48),
    (1, 130, 130, 8, 2, 64, "packed", True, 32, 32),
    (2, 96, 96, 8, 2, 72, "packed", False, 40, 24),
    (2, 120, 120, 8, 1, 64, "shuffled", True, 32, 40),
    (1, 120, 120, 8, 2, 128, "shuffled", False, 48, 32),
    (2, 64, 150, 8, 2, 64, "shuffled", True, 24, 32),   # Sq < Sk
    (1, 150, 70, 4, 1, 72, "shuffled", True, 32, 16),   # Sq > Sk
    (1, 256, 256, 2, 2, 64, "packed", True, 64, 64),    # blocks divide S
    (2, 50, 50, 8, 2, 128, "shuffled", True, 512, 512),  # one block, default-sized tile
]


@pytest.mark.parametrize("batch,q_len,kv_len,q_heads,kv_heads,head_dim,layout,causal,block_q,block_k", CASES)
def test_matches_reference(rng, batch, q_len, kv_len, q_heads, kv_heads, head_dim, layout, causal,
                           block_q, block_k):
    q, k, v = random_qkv(rng, batch, q_len, kv_len, q_heads, kv_heads, head_dim)
    mask_kwargs = dict(causal=causal)
    if layout == "plain":
        assert q_len == kv_len
    else:
        q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(
            rng, batch, q_len, kv_len, shuffle=layout == "shuffled")
        mask_kwargs.update(q_segment_ids=q_seg, q_positions=q_pos,
                           kv_segment_ids=kv_seg, kv_positions=kv_pos)
    check_against_reference(rng, q, k, v, mask_kwargs, block_q, block_k)


def test_fully_masked_rows_are_zero_with_zero_gradients(rng):
    batch, length, heads, head_dim = 2, 70, 4, 64
    q, k, v = random_qkv(rng, batch, length, length, heads, 2, head_dim)
    seg, pos = packed_layout(rng, batch, length, shuffle=True)
    q_seg = seg.copy()
    q_seg[0, :5] = 0                     # padding queries
    q_seg[1, :3] = 99                    # a segment no key has
    seg[1, pos[1] == 0] = 0              # drop each sample's first key: causal rows at pos 0 see nothing
    mask_kwargs = dict(q_segment_ids=q_seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos,
                       causal=True)
    out, lse, (dq, _, _) = check_against_reference(rng, q, k, v, mask_kwargs, 16, 24)
    empty = ~np.asarray(jnp.isfinite(lse)).transpose(0, 2, 1)  # [B, Sq, Hq]
    assert empty[0, :5].all() and empty[1, :3].all()
    np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)
    np.testing.assert_array_equal(np.asarray(dq)[empty], 0.0)


def test_everything_masked(rng):
    q, k, v = random_qkv(rng, 1, 40, 40, 4, 2, 64)
    zeros = np.zeros((1, 40), np.int32)
    kernel = lambda q, k, v: flash_attention(q, k, v, kv_segment_ids=zeros, impl="xla",
                                             block_q=16, block_k=16)
    out, lse = kernel(q, k, v)
    np.testing.assert_array_equal(out, 0.0)
    assert np.isneginf(np.asarray(lse)).all()
    def loss(*args):
        out, lse = kernel(*args)
        return out.sum() + jnp.where(jnp.isfinite(lse), lse, 0.0).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_bfloat16_accumulates_in_float32(rng):
    q, k, v = random_qkv(rng, 1, 100, 100, 4, 2, 64)
    seg, pos = packed_layout(rng, 1, 100, shuffle=True)
    mask_kwargs = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos)
    q16, k16, v16 = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out, lse = flash_attention(q16, k16, v16, **mask_kwargs, impl="xla", block_q=32, block_k=32)
    ref_out, ref_lse = reference_attention(q16, k16, v16, **mask_kwargs)
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    assert rel_err(out, ref_out) <= 1e-2
    finite = np.isfinite(np.asarray(ref_lse))
    assert rel_err(np.asarray(lse)[finite], np.asarray(ref_lse)[finite]) <= 1e-3
    grads = jax.grad(lambda *a: flash_attention(*a, **mask_kwargs, impl="xla", block_q=32,
                                                block_k=32)[0].astype(jnp.float32).sum(),
                     argnums=(0, 1, 2))(q16, k16, v16)
    ref_grads = jax.grad(lambda *a: reference_attention(*a, **mask_kwargs)[0].sum(),
                         argnums=(0, 1, 2))(q16, k16, v16)
    for g, ref_g in zip(grads, ref_grads):
        assert g.dtype == jnp.bfloat16
        assert rel_err(g, ref_g) <= 2e-2


def test_memory_is_linear_in_sequence_length():
    """Compiled temporaries of forward+backward: far below one [Hq, S, S] score
    matrix, and at most ~2x when S doubles."""
    def temp_bytes(length):
        q = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, 1, 16), jnp.float32)
        loss = lambda q, k, v: flash_attention(q, k, v, impl="xla", block_q=128, block_k=128)[0].sum()
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return grad.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(2048), temp_bytes(4096)
    assert large < 2 * 4096 * 4096 * 4 / 16
    assert large <= 2.5 * small
