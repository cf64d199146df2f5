"""flash_attention_bwd from a given out/lse, and merge_partials, as ring attention uses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import (attention_delta, flash_attention, flash_attention_bwd, merge_partials,
                                  reference_attention)
from longvila_jax.kernels.testing import query_key_layouts, random_qkv, rel_err

TOL = 1e-5


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def finite_part(lse):
    return jnp.where(jnp.isfinite(lse), lse, 0.0)


@pytest.mark.parametrize("q_heads,kv_heads,causal,with_dlse", [
    (4, 4, True, False), (8, 2, False, True), (8, 1, True, True)])
def test_bwd_with_given_out_and_lse_matches_reference_vjp(rng, q_heads, kv_heads, causal, with_dlse):
    batch, q_len, kv_len, head_dim = 2, 90, 110, 64
    q, k, v = random_qkv(rng, batch, q_len, kv_len, q_heads, kv_heads, head_dim)
    q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, batch, q_len, kv_len, shuffle=True)
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos,
                kv_positions=kv_pos, causal=causal)
    (ref_out, ref_lse), ref_vjp = jax.vjp(lambda *a: reference_attention(*a, **mask), q, k, v)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    dlse = rng.standard_normal(ref_lse.shape).astype(np.float32) if with_dlse else None
    ref_grads = ref_vjp((dout, jnp.zeros_like(ref_lse) if dlse is None else jnp.asarray(dlse)))
    grads = flash_attention_bwd(q, k, v, ref_out, ref_lse, dout, dlse=dlse, **mask, impl="xla",
                                block_q=32, block_k=48)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.shape == ref_g.shape and np.isfinite(np.asarray(g)).all(), name
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))


def test_given_delta_replaces_the_row_sum_and_dlse(rng):
    """``delta=`` (from ``attention_delta``) is what the backward uses: a delta built with some dlse
    gives the reference gradients for that dlse although ``dlse`` itself is not passed."""
    batch, q_len, kv_len, heads, head_dim = 1, 70, 96, 4, 32
    q, k, v = random_qkv(rng, batch, q_len, kv_len, heads, 2, head_dim)
    q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, batch, q_len, kv_len, shuffle=True)
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos, causal=True)
    (ref_out, ref_lse), ref_vjp = jax.vjp(lambda *a: reference_attention(*a, **mask), q, k, v)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    dlse = rng.standard_normal(ref_lse.shape).astype(np.float32)
    ref_grads = ref_vjp((dout, jnp.asarray(dlse)))
    delta = attention_delta(ref_out, dout, ref_lse, dlse=dlse)
    assert delta.shape == ref_lse.shape and delta.dtype == jnp.float32
    grads = flash_attention_bwd(q, k, v, ref_out, ref_lse, dout, delta=delta, **mask, impl="xla", block_q=32,
                                block_k=32)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))


def test_two_key_halves_merged_then_backward_equal_full_attention(rng):
    """The ring pattern: partial forwards over key halves, merge, backward per half
    with the merged (global) out/lse, then sum dq and concatenate dk/dv."""
    batch, length, q_heads, kv_heads, head_dim = 2, 96, 8, 2, 64
    q, k, v = random_qkv(rng, batch, length, length, q_heads, kv_heads, head_dim)
    q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, batch, length, length, shuffle=True)
    half = length // 2
    parts = [dict(q_segment_ids=q_seg, q_positions=q_pos, kv_segment_ids=kv_seg[:, sl],
                  kv_positions=kv_pos[:, sl], causal=True, impl="xla", block_q=32, block_k=20)
             for sl in (slice(0, half), slice(half, None))]
    k_parts, v_parts = (k[:, :half], k[:, half:]), (v[:, :half], v[:, half:])

    partial = [flash_attention(q, kp, vp, **m) for kp, vp, m in zip(k_parts, v_parts, parts)]
    out, lse = merge_partials(*partial[0], *partial[1])
    full = dict(q_segment_ids=q_seg, q_positions=q_pos, kv_segment_ids=kv_seg,
                kv_positions=kv_pos, causal=True)
    (ref_out, ref_lse), ref_vjp = jax.vjp(lambda *a: reference_attention(*a, **full), q, k, v)
    assert rel_err(out, ref_out) <= TOL
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    assert rel_err(finite_part(lse), finite_part(ref_lse)) <= TOL

    dout = rng.standard_normal(q.shape).astype(np.float32)
    ref_dq, ref_dk, ref_dv = ref_vjp((dout, jnp.zeros_like(ref_lse)))
    grads = [flash_attention_bwd(q, kp, vp, out, lse, dout, **m)
             for kp, vp, m in zip(k_parts, v_parts, parts)]
    assert rel_err(grads[0][0] + grads[1][0], ref_dq) <= TOL
    assert rel_err(jnp.concatenate([grads[0][1], grads[1][1]], 1), ref_dk) <= TOL
    assert rel_err(jnp.concatenate([grads[0][2], grads[1][2]], 1), ref_dv) <= TOL


def test_merge_partials_handles_empty_parts_and_differentiates(rng):
    batch, length, heads, head_dim = 1, 12, 2, 8
    out_a, out_b = (rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
                    for _ in range(2))
    lse_a, lse_b = (rng.standard_normal((batch, heads, length)).astype(np.float32) for _ in range(2))
    lse_a[:, :, :4] = -np.inf          # part a empty on rows 0-3
    lse_b[:, :, 2:6] = -np.inf         # part b empty on rows 2-5: rows 2-3 empty in both
    out_a[np.isneginf(lse_a).transpose(0, 2, 1)] = 0.0
    out_b[np.isneginf(lse_b).transpose(0, 2, 1)] = 0.0
    out, lse = merge_partials(out_a, lse_a, out_b, lse_b)

    expected_lse = np.logaddexp(lse_a, lse_b)
    with np.errstate(invalid="ignore"):  # -inf - -inf on rows empty in both parts
        w_a = np.nan_to_num(np.exp(lse_a - expected_lse)).transpose(0, 2, 1)[..., None]
        w_b = np.nan_to_num(np.exp(lse_b - expected_lse)).transpose(0, 2, 1)[..., None]
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-6, atol=1e-6)  # lse near 0: float32 absolute error
    np.testing.assert_allclose(out, w_a * out_a + w_b * out_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out)[:, 2:4], 0.0)

    def loss(*args):
        merged_out, merged_lse = merge_partials(*args)
        return jnp.sum(merged_out ** 2) + jnp.sum(finite_part(merged_lse))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(out_a, lse_a, out_b, lse_b)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


def test_merge_partials_gradient_matches_plain_formula(rng):
    shape, lse_shape = (1, 10, 2, 8), (1, 2, 10)
    args = [rng.standard_normal(shape).astype(np.float32), rng.standard_normal(lse_shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32), rng.standard_normal(lse_shape).astype(np.float32)]
    weight = rng.standard_normal(shape).astype(np.float32)

    def plain(out_a, lse_a, out_b, lse_b):
        lse = jnp.logaddexp(lse_a, lse_b)
        w_a = jnp.swapaxes(jnp.exp(lse_a - lse), 1, 2)[..., None]
        w_b = jnp.swapaxes(jnp.exp(lse_b - lse), 1, 2)[..., None]
        return w_a * out_a + w_b * out_b, lse

    def loss(merge):
        def f(*a):
            out, lse = merge(*a)
            return jnp.sum(out * weight) + jnp.sum(jnp.sin(lse))
        return f

    grads = jax.grad(loss(merge_partials), argnums=(0, 1, 2, 3))(*args)
    ref_grads = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(*args)
    for g, ref_g in zip(grads, ref_grads):
        assert rel_err(g, ref_g) <= TOL
