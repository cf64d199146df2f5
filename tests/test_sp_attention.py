"""sp.attention on simulated 8-device meshes against the dense float32 reference.

Every case draws fresh random q, k, v, a random pack of samples with padding,
and a device order (the zigzag ``balanced_order`` or a random permutation),
then checks out, dq, dk, dv at relative error <= 1e-5 and exact zeros (no
NaN) on padding.  The cases cover every mesh shape with MHA and both GQA
ratios, causal and not, both kinds of order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax import sp
from longvila_jax.kernels import reference_attention
from longvila_jax.sharding import make_mesh

SEQ, HEAD_DIM, Q_HEADS = 128, 16, 8
TOL = 1e-5

# (mesh axes, kv heads, causal, order, layout, batch)
CASES = [
    (dict(ring=8), 8, True, "balanced", "single", 2),
    (dict(ring=8), 2, False, "random", "pack", 2),
    (dict(ring=8), 1, True, "random", "pack", 2),
    (dict(ulysses=8), 8, False, "balanced", "pack", 2),
    (dict(ulysses=8), 2, True, "random", "pack", 2),
    (dict(ulysses=8), 1, True, "balanced", "pack", 2),
    (dict(ring=2, ulysses=4), 8, True, "random", "pack", 2),
    (dict(ring=2, ulysses=4), 2, True, "balanced", "single", 2),
    (dict(ring=2, ulysses=4), 1, False, "random", "pack", 2),
    (dict(ring=4, ulysses=2), 8, False, "random", "pack", 2),
    (dict(ring=4, ulysses=2), 2, True, "random", "pack", 2),
    (dict(ring=4, ulysses=2), 1, True, "balanced", "pack", 2),
    (dict(data=2, ring=2, ulysses=2), 8, True, "balanced", "pack", 2),
    (dict(data=2, ring=2, ulysses=2), 2, False, "random", "pack", 2),
    (dict(data=2, ring=2, ulysses=2), 1, True, "random", "pack", 1),  # batch 1 < data 2: replicated
]


def random_pack(rng, length, layout):
    """Natural-order (segment_ids, positions) of one row: samples then padding (>= 4 tokens)."""
    used = length - int(rng.integers(4, length // 5))
    if layout == "single":
        lengths = [used]
    else:
        n = int(rng.integers(2, 6))
        cuts = np.sort(rng.choice(np.arange(1, used), n - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [used]]))
    seg = np.zeros(length, np.int32)
    pos = np.zeros(length, np.int32)
    start = 0
    for i, n in enumerate(lengths, start=1):
        seg[start:start + n] = i
        pos[start:start + n] = np.arange(n)
        start += n
    return seg, pos


def device_inputs(rng, batch, kv_heads, ring, order, layout):
    """Random q, k, v, dout and per-token arrays, all in device order."""
    segs, poss = [], []
    for _ in range(batch):
        seg, pos = random_pack(rng, SEQ, layout)
        perm = sp.balanced_order(seg, ring)[0] if order == "balanced" else rng.permutation(SEQ)
        segs.append(seg[perm])
        poss.append(pos[perm])
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    q = normal(batch, SEQ, Q_HEADS, HEAD_DIM)
    k = normal(batch, SEQ, kv_heads, HEAD_DIM)
    v = normal(batch, SEQ, kv_heads, HEAD_DIM)
    dout = normal(batch, SEQ, Q_HEADS, HEAD_DIM)
    return q, k, v, dout, jnp.asarray(np.stack(segs)), jnp.asarray(np.stack(poss))


def rel_err(got, want):
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def check_against_reference(q, k, v, dout, seg, pos, mesh, causal):
    def sp_attn(q, k, v):
        return sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh, causal=causal)

    def ref_attn(q, k, v):
        return reference_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos,
                                   kv_positions=pos, causal=causal)[0]

    def value_and_grads(f):
        out, vjp = jax.vjp(f, q, k, v)
        return (out, *vjp(dout))

    got = jax.jit(lambda: value_and_grads(sp_attn))()
    want = jax.jit(lambda: value_and_grads(ref_attn))()
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert bool(jnp.all(jnp.isfinite(g))), f"{name} has non-finite values"
        assert rel_err(g, w) <= TOL, f"{name}: relative error {rel_err(g, w):.2e} > {TOL}"
    pad = np.asarray(seg == 0)
    for name, g in zip(("out", "dq", "dk", "dv"), got):
        assert not np.any(np.asarray(g)[pad]), f"{name} is not exactly 0 on padding tokens"
    return got


@pytest.mark.parametrize("axes, kv_heads, causal, order, layout, batch", CASES,
                         ids=lambda x: "-".join(f"{k}{v}" for k, v in x.items()) if isinstance(x, dict) else str(x))
def test_attention_matches_dense_reference(rng, axes, kv_heads, causal, order, layout, batch):
    mesh = make_mesh(**axes)
    q, k, v, dout, seg, pos = device_inputs(rng, batch, kv_heads, axes.get("ring", 1), order, layout)
    check_against_reference(q, k, v, dout, seg, pos, mesh, causal)


def test_result_independent_of_device_order(rng):
    """Two device orders of the same tokens give the same per-token result."""
    mesh = make_mesh(ring=4, ulysses=2)
    q, k, v, _, seg, pos = device_inputs(rng, 1, 2, 4, "random", "pack")
    perm = rng.permutation(SEQ)
    f = jax.jit(lambda q, k, v, s, p: sp.attention(q, k, v, segment_ids=s, positions=p, mesh=mesh))
    out_a = f(q, k, v, seg, pos)
    out_b = f(q[:, perm], k[:, perm], v[:, perm], seg[:, perm], pos[:, perm])
    assert rel_err(out_b, out_a[:, perm]) <= TOL


def test_no_mesh_and_batch_only_mesh_are_the_single_device_kernel(rng):
    q, k, v, dout, seg, pos = device_inputs(rng, 8, 2, 1, "random", "pack")
    check_against_reference(q, k, v, dout, seg, pos, None, True)
    mesh = make_mesh(data=2, fsdp=4)
    check_against_reference(q, k, v, dout, seg, pos, mesh, True)


def test_odd_local_length_and_batch_not_dividing_data(rng):
    """S/R odd (no zigzag sub-blocks) and B=3 on data=2 (batch replicated, as divisible_spec does)."""
    mesh = make_mesh(data=2, ring=4)
    length = 12
    seg = jnp.asarray(rng.integers(0, 3, (3, length)), jnp.int32)
    pos = jnp.asarray(rng.integers(0, 6, (3, length)), jnp.int32)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    q, dout = normal(3, length, 4, 16), normal(3, length, 4, 16)
    k, v = normal(3, length, 2, 16), normal(3, length, 2, 16)
    check_against_reference(q, k, v, dout, seg, pos, mesh, True)


def test_ring_backward_computes_the_row_sum_once(rng, monkeypatch):
    """The ring's backward traces one ``attention_delta`` (the row sum of out * dout) and hands its
    rows to every per-step ``flash_attention_bwd`` call, which then computes none of its own; the
    gradients still match the dense reference."""
    from longvila_jax import kernels

    traced_deltas, given = [], []
    attention_delta, flash_attention_bwd = kernels.attention_delta, kernels.flash_attention_bwd

    def counting_delta(*args, **kwargs):
        traced_deltas.append(None)
        return attention_delta(*args, **kwargs)

    def recording_bwd(*args, **kwargs):
        given.append(kwargs.get("delta") is not None)
        return flash_attention_bwd(*args, **kwargs)

    monkeypatch.setattr(kernels, "attention_delta", counting_delta)
    monkeypatch.setattr(kernels, "flash_attention_bwd", recording_bwd)
    q, k, v, dout, seg, pos = device_inputs(rng, 1, 2, 4, "balanced", "pack")
    check_against_reference(q, k, v, dout, seg, pos, make_mesh(ring=4, ulysses=2), True)
    assert len(traced_deltas) == 1
    assert given and all(given)
