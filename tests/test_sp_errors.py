"""sp.attention rejects bad inputs with errors that name the numbers involved."""

import jax.numpy as jnp
import pytest

from longvila_jax import sp
from longvila_jax.sharding import make_mesh


def inputs(batch=2, length=64, q_heads=8, kv_heads=2, dim=16, dtype=jnp.float32, kv_dtype=None):
    q = jnp.zeros((batch, length, q_heads, dim), dtype)
    k = jnp.zeros((batch, length, kv_heads, dim), kv_dtype or dtype)
    v = jnp.zeros((batch, length, kv_heads, dim), kv_dtype or dtype)
    ids = jnp.ones((batch, length), jnp.int32)
    return q, k, v, ids, ids


def call(mesh, q, k, v, seg, pos):
    return sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh)


def test_sequence_not_dividing_the_mesh():
    with pytest.raises(ValueError, match=r"sequence length 100 must divide by ring \* ulysses = 4 \* 2 = 8"):
        call(make_mesh(ring=4, ulysses=2), *inputs(length=100))


def test_query_heads_not_divisible_by_ulysses():
    with pytest.raises(ValueError, match="query heads 6 must be divisible by the ulysses axis size 4"):
        call(make_mesh(ring=2, ulysses=4), *inputs(q_heads=6, kv_heads=2))


def test_mismatched_dtypes():
    with pytest.raises(TypeError, match="q float32, k bfloat16, v bfloat16"):
        call(make_mesh(ring=8), *inputs(kv_dtype=jnp.bfloat16))


def test_query_heads_not_multiple_of_kv_heads():
    with pytest.raises(ValueError, match="query heads 8 must be a multiple of kv heads 3"):
        call(make_mesh(ring=8), *inputs(kv_heads=3))


def test_token_arrays_of_the_wrong_shape_or_dtype():
    q, k, v, seg, pos = inputs()
    with pytest.raises(ValueError, match=r"segment_ids must be an integer \[batch, seq\] = \(2, 64\)"):
        call(make_mesh(ring=8), q, k, v, seg[:, :32], pos)
    with pytest.raises(ValueError, match="positions must be an integer"):
        call(make_mesh(ring=8), q, k, v, seg, pos.astype(jnp.float32))


def test_q_and_kv_lengths_must_agree():
    q, k, v, seg, pos = inputs()
    with pytest.raises(ValueError, match="disagree"):
        call(make_mesh(ring=8), q, k[:, :32], v[:, :32], seg, pos)
