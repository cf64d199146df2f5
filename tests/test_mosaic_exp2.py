"""kernels/mosaic_exp2.py: the polynomial exp2 against numpy's, its exact zeros and ones, the column split
of a tile, the backend's spec, and that the Mosaic GPU kernels lower with it (cross-lowered for CUDA
on this CPU machine: every op the polynomial adds needs a Mosaic GPU lowering rule)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from longvila_jax.kernels import mosaic_backend, mosaic_exp2


@pytest.fixture
def poly_fraction():
    yield mosaic_exp2.set_fraction
    mosaic_exp2.set_fraction(0.0)


def test_the_polynomial_matches_exp2_within_2e_4(rng):
    x = np.concatenate([-rng.random(200_000) * 126.0, -rng.random(1000) * 1e-3, rng.integers(-126, 1, 100)])
    want = np.exp2(x.astype(np.float32).astype(np.float64))
    # eager and jitted: XLA folds (x + R) - R into x unless something stops it (the kernels run jitted)
    for poly in (mosaic_exp2.exp2_poly, jax.jit(mosaic_exp2.exp2_poly)):
        got = np.asarray(poly(jnp.asarray(x, jnp.float32)), np.float64)
        assert np.max(np.abs(got / want - 1.0)) <= 2e-4


def test_masked_scores_give_exactly_zero_and_zero_gives_one():
    x = jnp.asarray([-jnp.inf, -1e30, -127.0, -200.0, 0.0, -1.0, -2.0], jnp.float32)
    got = np.asarray(mosaic_exp2.exp2_poly(x))
    assert (got[:4] == 0.0).all() and not np.signbit(got[:4]).any()
    np.testing.assert_array_equal(got[4:], [1.0, 0.5, 0.25])  # whole exponents: the cubic's f = 0


@pytest.mark.parametrize("width,fraction,cols", [(128, 0.25, 32), (128, 0.375, 48), (64, 0.25, 16), (64, 0.125, 0),
                                                 (128, 1.0, 128), (128, 0.0, 0)])
def test_a_tile_sends_its_last_columns_to_the_polynomial(rng, poly_fraction, width, fraction, cols):
    assert mosaic_exp2.poly_columns(width, fraction) == cols
    poly_fraction(fraction)
    x = jnp.asarray(-rng.random((64, width)) * 20.0, jnp.float32)
    got = np.asarray(mosaic_exp2.exp2_tile(x))
    np.testing.assert_array_equal(got[:, width - cols:], np.asarray(mosaic_exp2.exp2_poly(x[:, width - cols:])))
    np.testing.assert_array_equal(got[:, :width - cols], np.asarray(jnp.exp2(x[:, :width - cols])))


def test_the_backend_spec_names_the_fraction_or_says_what_it_expected(poly_fraction):
    mosaic_backend.set_exp2("poly:0.25")
    assert mosaic_exp2.POLY["fraction"] == 0.25
    mosaic_backend.set_exp2("mufu")
    assert mosaic_exp2.POLY["fraction"] == 0.0
    for bad in ("poly", "poly:0.3", "cubic:0.25", "poly:x"):
        with pytest.raises(ValueError, match="exp2"):
            mosaic_backend.set_exp2(bad)


@pytest.mark.parametrize("backward", ["split", "dq_thread"])
def test_every_mosaic_kernel_lowers_for_cuda_with_the_polynomial(poly_fraction, backward, monkeypatch):
    """Forward and backward of 4 packed causal samples, with a quarter of each tile's exponentials by the
    polynomial and without; export for CUDA runs every Mosaic GPU lowering rule in Python (no GPU needed)."""
    monkeypatch.setitem(mosaic_backend.BACKWARD, "mode", backward)
    batch, length, heads, kv_heads, dim = 1, 512, 2, 1, 128
    seg = jnp.repeat(jnp.arange(1, 5, dtype=jnp.int32), length // 4)[None]
    pos = jnp.tile(jnp.arange(length // 4, dtype=jnp.int32), 4)[None]

    def loss(q, k, v):
        out, lse = mosaic_backend.attention(q, k, v, seg, seg, pos, pos, causal=True, scale=dim ** -0.5)
        return out.astype(jnp.float32).sum() + lse.sum()

    q = jax.ShapeDtypeStruct((batch, length, heads, dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((batch, length, kv_heads, dim), jnp.bfloat16)
    wanted = {"split": ("attention_forward", "attention_dkdv", "attention_dq"),
              "dq_thread": ("attention_forward", "attention_dkdv_dq_thread")}[backward]
    sizes = []
    for fraction in (0.0, 0.25):
        poly_fraction(fraction)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))  # a fresh trace per fraction
        module = export.export(grads, platforms=("cuda",))(q, kv, kv).mlir_module()
        assert all(f"{name}_mosaic_gpu" in module for name in wanted), (fraction, wanted)
        sizes.append(len(module))
    assert sizes[1] > sizes[0]  # the polynomial's ops are in the kernels
