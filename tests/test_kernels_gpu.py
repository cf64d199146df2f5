"""Every GPU backend against the float32 reference, bf16, on fresh random inputs.

Run on the device machine: ``pytest -m gpu tests/test_kernels_gpu.py``.
Tolerance: relative error (Frobenius) <= 1e-2 for out, lse, dq, dk, dv.
``LONGVILA_GPU_IMPLS=mosaic,triton`` limits the backends checked (default: every valid one).
Before each backend runs, device memory the size of its outputs is filled with NaN and freed,
so the allocator hands the poisoned blocks to the kernels' outputs: a row a kernel forgets
to write shows up as NaN.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import dispatch, flash_attention, flash_attention_bwd, mosaic_backend, reference_attention
from longvila_jax.kernels.testing import query_key_layouts, random_qkv, rel_err, rising_scores_qkv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU"),
]
TOL = 1e-2


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"seed={seed}")
    return np.random.default_rng(seed)


# (q_len, kv_len, q_heads, kv_heads, layout, causal)
CASES = [
    (1024, 1024, 32, 8, "plain", True),
    (1024, 1024, 32, 8, "plain", False),
    (1000, 1000, 32, 4, "packed", True),
    (1024, 1024, 32, 8, "shuffled", True),
    (512, 1536, 32, 4, "shuffled", True),
    (1536, 768, 32, 8, "shuffled", False),
]


def poison(*likes):
    """Fill, then free, device buffers as large as ``likes`` with NaN (see the module docstring)."""
    for x in likes:
        jnp.full(x.shape, jnp.nan, jnp.float32).block_until_ready().delete()


def selected(impls):
    chosen = os.environ.get("LONGVILA_GPU_IMPLS")
    return impls if not chosen else [i for i in impls if i in chosen.split(",")]


def backends_for(q, k, mask):
    """Every backend that claims this call."""
    call = dispatch.AttentionCall(
        platform="gpu", dtype=np.dtype(q.dtype), head_dim=q.shape[3], q_len=q.shape[1],
        kv_len=k.shape[1], q_heads=q.shape[2], kv_heads=k.shape[2], causal=mask["causal"],
        has_segments="q_segment_ids" in mask, has_positions="q_positions" in mask, given_lse=False)
    return [name for name, backend in dispatch.BACKENDS.items() if backend.unsupported(call) is None]


@pytest.mark.parametrize("q_len,kv_len,q_heads,kv_heads,layout,causal", CASES)
@pytest.mark.parametrize("head_dim", [128, 64, 72])
def test_backends_match_reference(rng, q_len, kv_len, q_heads, kv_heads, layout, causal, head_dim):
    batch = 1
    q, k, v = (jnp.asarray(x, jnp.bfloat16)
               for x in random_qkv(rng, batch, q_len, kv_len, q_heads, kv_heads, head_dim))
    mask = dict(causal=causal)
    if layout != "plain":
        q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, batch, q_len, kv_len, max_segments=4,
                                                         shuffle=layout == "shuffled")
        q_seg[:, :7] = 0  # some fully masked rows
        mask.update(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos)
    (ref_out, ref_lse), ref_vjp = jax.vjp(lambda *a: reference_attention(*a, **mask), q, k, v)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)
    ref_grads = ref_vjp((dout.astype(jnp.float32), jnp.zeros_like(ref_lse)))
    finite = np.isfinite(np.asarray(ref_lse))

    impls = backends_for(q, k, mask)
    assert {"xla", "triton"} <= set(impls) and ("cudnn" in impls) == (layout == "plain")
    hopper = dispatch.BACKENDS["mosaic"]._is_hopper()
    assert ("mosaic" in impls) == (hopper and head_dim in (64, 128))
    for impl in selected(impls):
        fwd = jax.jit(lambda q, k, v: flash_attention(q, k, v, **mask, impl=impl))
        poison(q, q)
        out, lse = fwd(q, k, v)
        assert rel_err(out, ref_out) <= TOL, impl
        np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), finite)
        assert rel_err(np.asarray(lse)[finite], np.asarray(ref_lse)[finite]) <= TOL, impl
        for mode in mosaic_backward_modes(impl, head_dim):
            run = jax.jit(lambda q, k, v, dout: jax.vjp(  # a new function: traced in this mode
                lambda *a: flash_attention(*a, **mask, impl=impl)[0], q, k, v)[1](dout))
            poison(q, k, v)
            grads = run(q, k, v, dout)
            for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
                assert np.isfinite(np.asarray(g, np.float32)).all(), (impl, mode, name)
                assert rel_err(g, ref_g) <= TOL, (impl, mode, name, rel_err(g, ref_g))
        mosaic_backend.set_backward(mosaic_backend.BACKWARD_MODES[0])


def mosaic_backward_modes(impl, head_dim):
    """The backward variants to check: for mosaic every way of getting dQ that serves this D (each
    set before its trace; "dq_thread" also with its other register split), otherwise just the default
    (None)."""
    if impl != "mosaic":
        yield None
        return
    for mode in mosaic_backend.BACKWARD_MODES:
        if mode == "auto":  # split at these lengths
            continue
        mosaic_backend.set_backward(mode)
        yield mode
    mosaic_backend.set_backward("dq_thread")
    try:
        mosaic_backend.set_dq_thread("compute:208,thread2:88")
        yield "dq_thread, 208/88"
    finally:
        mosaic_backend.set_dq_thread("")


def test_given_lse_backward_on_gpu(rng):
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(rng, 1, 1024, 1024, 32, 8, 128))
    q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, 1, 1024, 1024, shuffle=True)
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos)
    (ref_out, ref_lse), ref_vjp = jax.vjp(lambda *a: reference_attention(*a, **mask), q, k, v)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    ref_grads = ref_vjp((dout, jnp.zeros_like(ref_lse)))
    impls = ["xla", "triton"] + (["mosaic"] if dispatch.BACKENDS["mosaic"]._is_hopper() else [])
    for impl in selected(impls):
        poison(q, k, v)
        grads = jax.jit(lambda *a: flash_attention_bwd(*a, **mask, impl=impl))(
            q, k, v, ref_out.astype(jnp.bfloat16), ref_lse, dout.astype(jnp.bfloat16))
        for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
            assert rel_err(g, ref_g) <= TOL, (impl, name, rel_err(g, ref_g))


@pytest.mark.parametrize("rescale", ["lazy", "always"])
def test_mosaic_forward_follows_rising_scores_on_gpu(rng, rescale):
    """Scores that rise along the keys by up to 3 x mosaic_rescale.GROWTH per key block, so some rows'
    maxima move on every block and others stay (the lazy rescale's vote and both of its branches run
    natively): out, lse and dv against the float32 reference (dq and dk: ill-conditioned on such peaked
    rows, see the CPU test), causal, 1024 tokens, GQA 32/8, D 128."""
    from longvila_jax.kernels import mosaic_rescale

    if "mosaic" not in selected(["mosaic"]) or not dispatch.BACKENDS["mosaic"]._is_hopper():
        pytest.skip("the mosaic backend needs a Hopper GPU and LONGVILA_GPU_IMPLS to include it")
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in rising_scores_qkv(
        rng, 1024, 1024, 32, 8, 128, max_rise=3 * mosaic_rescale.GROWTH))
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)

    def run(attention, *qkv):
        (out, lse), vjp = jax.vjp(attention, *qkv)
        return out, lse, vjp((dout.astype(out.dtype), jnp.zeros_like(lse)))[2]

    mosaic_backend.set_forward_rescale(rescale)
    try:
        poison(q, k, v)
        out, lse, dv = jax.jit(lambda *a: run(lambda *b: flash_attention(*b, impl="mosaic"), *a))(q, k, v)
    finally:
        mosaic_backend.set_forward_rescale(mosaic_backend.FORWARD_RESCALE_DEFAULT)
    ref_out, ref_lse, ref_dv = run(reference_attention, *(x.astype(jnp.float32) for x in (q, k, v)))
    assert rel_err(out, ref_out) <= TOL
    np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), rtol=1e-4, atol=1e-3)
    assert rel_err(dv, ref_dv) <= TOL


def test_cudnn_lse_is_differentiable(rng):
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(rng, 1, 1024, 1024, 32, 8, 128))
    weight = jnp.asarray(rng.standard_normal((1, 32, 1024)), jnp.float32)

    def loss(attention):
        return lambda *a: jnp.sum(attention(*a)[1] * weight) + jnp.sum(attention(*a)[0].astype(jnp.float32))

    grads = jax.jit(jax.grad(loss(lambda *a: flash_attention(*a, impl="cudnn")), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
    for g, ref_g in zip(grads, ref_grads):
        assert rel_err(g, ref_g) <= TOL


@pytest.mark.parametrize("grid,workers,rescale", [
    ("persistent", 7, "lazy"), ("blocks", None, "lazy"), ("persistent", 7, "always"), ("blocks", None, "always")])
def test_mosaic_grids_on_gpu(rng, grid, workers, rescale):
    """The Mosaic forward with 7 persistent CTAs (36-37 query blocks each: lists, queries, K/V slots and
    output stores carried across items on the hardware's asynchronous copies) and with one CTA per block;
    ``rescale``: how it rescales its accumulator (``mosaic_rescale.RESCALES``); then the backward ("auto"
    runs split at 1,000 keys); packed GQA 32/8, ragged length, empty rows, dlse."""
    if not dispatch.BACKENDS["mosaic"]._is_hopper() or "mosaic" not in selected(["mosaic"]):
        pytest.skip("needs a Hopper GPU and mosaic among LONGVILA_GPU_IMPLS")
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(rng, 1, 1000, 1000, 32, 8, 128))
    q_seg, q_pos, kv_seg, kv_pos = query_key_layouts(rng, 1, 1000, 1000, max_segments=4, shuffle=False)
    q_seg[:, :7] = 0
    mask = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos, causal=True)
    dout = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    dlse = jnp.asarray(rng.standard_normal((1, 32, 1000)), jnp.float32)

    def loss(attention):
        def f(*qkv):
            out, lse = attention(*qkv)
            return jnp.sum(out.astype(jnp.float32) * dout) + jnp.sum(jnp.where(jnp.isfinite(lse), lse * dlse, 0.0))
        return f

    ref_out, ref_lse = reference_attention(q, k, v, **mask)
    ref_grads = jax.grad(loss(lambda *a: reference_attention(*a, **mask)), argnums=(0, 1, 2))(q, k, v)
    mosaic_backend.set_grid(grid)
    mosaic_backend.PERSISTENT_WORKERS["count"] = workers
    mosaic_backend.set_forward_rescale(rescale)
    try:
        def attention(*qkv):
            return flash_attention(*qkv, **mask, impl="mosaic")

        poison(q, q)
        out, lse = jax.jit(attention)(q, k, v)
        poison(q, k, v)
        grads = jax.jit(jax.grad(loss(attention), argnums=(0, 1, 2)))(q, k, v)
    finally:
        mosaic_backend.GRID.update(mosaic_backend.DEFAULT_GRID)
        mosaic_backend.PERSISTENT_WORKERS["count"] = None
        mosaic_backend.set_forward_rescale(mosaic_backend.FORWARD_RESCALE_DEFAULT)
    finite = np.isfinite(np.asarray(ref_lse))
    np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), finite)
    assert rel_err(out, ref_out) <= TOL
    assert rel_err(np.asarray(lse)[finite], np.asarray(ref_lse)[finite]) <= TOL
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert np.isfinite(np.asarray(g, np.float32)).all(), name
        assert rel_err(g, ref_g) <= TOL, (name, rel_err(g, ref_g))
