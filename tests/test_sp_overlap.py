"""The ring's transfers can overlap its compute (compiled HLO), and remat can keep its residuals.

On CPU collectives are synchronous, so the check is on data flow and issue
order (each K/V transfer is issued before, and independent of, the compute of
its step; in the backward every transfer but the final dK/dV send home has
compute it can hide behind).  The asynchronous start/done case (GPU HLO) is
checked on a hand-written module.
"""

import jax
import jax.numpy as jnp

from longvila_jax import sp
from longvila_jax.sharding import make_mesh
from longvila_jax.sp.overlap import permute_overlap


def compiled_ring_hlo(grad):
    mesh = make_mesh(ring=4, ulysses=2)
    q = jnp.ones((1, 64, 2, 16))
    k = v = jnp.ones((1, 64, 1, 16))
    seg = jnp.ones((1, 64), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), (1, 64))

    def loss(q, k, v):
        return sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh).sum()

    f = jax.grad(loss, argnums=(0, 1, 2)) if grad else loss
    return jax.jit(f).lower(q, k, v).compile().as_text()


def test_forward_ring_issues_every_transfer_before_independent_compute():
    report = permute_overlap(compiled_ring_hlo(grad=False))
    assert len(report) >= 4  # k, v, ids, positions (XLA may combine them)
    assert all(r.overlapped for r in report), [r for r in report if not r.overlapped]


def test_backward_ring_exposes_only_the_final_dkv_send():
    report = permute_overlap(compiled_ring_hlo(grad=True))
    exposed = [r for r in report if not r.concurrent_compute]
    assert len(exposed) == 2, exposed  # dK and dV arriving home after the last step
    assert len(report) >= 12


GPU_STYLE = """
HloModule m, is_scheduled=true

%attn_body (p: f32[8,8]) -> f32[8,8] {
  %p = f32[8,8]{1,0} parameter(0)
  ROOT %d = f32[8,8]{1,0} dot(%p, %p), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[8,8], b: f32[8,8]) -> (f32[8,8], f32[8,8]) {
  %a = f32[8,8]{1,0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  %cp-start = (f32[8,8]{1,0}, f32[8,8]{1,0}) collective-permute-start(%b), source_target_pairs={{0,1},{1,0}}
  %f = f32[8,8]{1,0} fusion(%a), kind=kCustom, calls=%attn_body
  %cp-done = f32[8,8]{1,0} collective-permute-done(%cp-start)
  %cp2-start = (f32[8,8]{1,0}, f32[8,8]{1,0}) collective-permute-start(%f), source_target_pairs={{0,1},{1,0}}
  %cp2-done = f32[8,8]{1,0} collective-permute-done(%cp2-start)
  %g = f32[8,8]{1,0} fusion(%cp2-done), kind=kCustom, calls=%attn_body
  ROOT %t = (f32[8,8]{1,0}, f32[8,8]{1,0}) tuple(%cp-done, %g)
}
"""


def test_async_permute_spanning_compute_is_overlapped():
    first, second = permute_overlap(GPU_STYLE)
    assert first.asynchronous and first.overlapped and set(first.concurrent_compute) == {"f", "g"}
    assert second.asynchronous and not second.overlapped and not second.concurrent_compute
    # the same start with its done moved before the fusion: concurrent by data flow, not overlapped
    moved = GPU_STYLE.replace(
        "  %f = f32[8,8]{1,0} fusion(%a), kind=kCustom, calls=%attn_body\n"
        "  %cp-done = f32[8,8]{1,0} collective-permute-done(%cp-start)\n",
        "  %cp-done = f32[8,8]{1,0} collective-permute-done(%cp-start)\n"
        "  %f = f32[8,8]{1,0} fusion(%a), kind=kCustom, calls=%attn_body\n")
    first, _ = permute_overlap(moved)
    assert "f" in first.concurrent_compute and not first.overlapped


def test_remat_policy_on_named_residuals_skips_the_ring_forward(rng):
    """Saving ring.OUT_NAME / LSE_NAME under jax.checkpoint: no second ring forward, same grads."""
    import numpy as np
    from jax.ad_checkpoint import checkpoint_policies

    from longvila_jax.sp.ring import LSE_NAME, OUT_NAME

    mesh = make_mesh(ring=4, ulysses=2)
    q = jnp.asarray(rng.standard_normal((1, 64, 2, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, 64, 1, 16)), jnp.float32) for _ in range(2))
    seg = jnp.ones((1, 64), jnp.int32)
    pos = jnp.asarray(rng.permutation(64)[None], jnp.int32)

    def loss(q, k, v):
        return (sp.attention(q, k, v, segment_ids=seg, positions=pos, mesh=mesh) ** 2).sum()

    def ppermutes(f):
        return str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)).count("ppermute")

    saved = jax.checkpoint(loss, policy=checkpoint_policies.save_only_these_names(OUT_NAME, LSE_NAME))
    recomputed = jax.checkpoint(loss, policy=checkpoint_policies.nothing_saveable)
    assert ppermutes(saved) == ppermutes(loss) < ppermutes(recomputed)
    want = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    got = jax.jit(jax.grad(saved, argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-6 * float(jnp.abs(w).max()))
