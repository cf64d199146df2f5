"""Ring attention over the ``ring`` mesh axis, with a custom VJP.

Runs inside ``shard_map``.  Ring rank ``r`` (of R) holds the queries of its
slice, ``[B, n, Hq, D]``, and starts with its own K/V ``[B, n, Hkv, D]``
(never repeated for GQA) plus their segment ids and positions ``[B, n]``.

Forward, R steps: at step t rank r holds the K/V of rank ``r - t``; the
``ppermute`` that brings step t+1's K/V is issued before step t's compute,
so the transfer hides behind it.  Each step splits queries and keys into
``sub`` sub-blocks (2 when R > 1 and n is even: the two zigzag chunks of
``sp.order``), skips the sub-blocks that ``blocks.block_may_attend`` proves
empty, runs the single-device kernel on the rest and merges the partial
``(out, lse)`` into float32 accumulators (``kernels.merge_partials``).
Steps are a ``fori_loop`` (the last one peeled: it sends nothing), so compile
time does not grow with R.

Backward, a second ring pass: K/V rotate again (next transfer issued first),
and float32 dK/dV accumulators travel with them: at step t rank r adds the
gradient of its queries w.r.t. the K/V of rank ``r - t`` into the
accumulator that arrived from rank r-1 (sent at the start of step t, so the
transfer runs under step t's compute); after R sends every accumulator is
back at its owner.  Only that last send is exposed.  dQ stays local.  The
kernel backward takes the global (merged) ``out`` and ``lse``.  Partial
gradients are accumulated (and dK/dV sent) in float32.

With R = 1 there is no collective: the kernel's forward and given-lse
backward under this custom VJP (``sp.dispatch`` uses it so for every scheme).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from longvila_jax import kernels
from longvila_jax.sp.blocks import block_may_attend

AXIS = "ring"
OUT_NAME = "sp_attention_out"  # checkpoint names of the ring's saved residuals
LSE_NAME = "sp_attention_lse"


class RingConfig(NamedTuple):
    """Static settings of one ring attention call."""

    ring_size: int
    causal: bool
    scale: float | None
    impl: str
    axis_name: str = AXIS


def _send_next(tree, cfg: RingConfig):
    """Rank r sends ``tree`` to rank r+1 (mod R)."""
    perm = [(i, (i + 1) % cfg.ring_size) for i in range(cfg.ring_size)]
    return jax.tree.map(lambda x: lax.ppermute(x, cfg.axis_name, perm), tree)


def _sub_count(length: int, ring_size: int) -> int:
    """Sub-blocks per rank slice: the two zigzag chunks on a ring, one without a ring."""
    return 2 if ring_size > 1 and length % 2 == 0 else 1


def _rows(x, index, size: int, axis: int = 1):
    """Sub-block ``index`` (traced) of ``size`` tokens along ``axis``."""
    return lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _put_rows(x, update, index, axis: int = 1):
    return lax.dynamic_update_slice_in_dim(x, update, index * update.shape[axis], axis=axis)


def _kernel_args(q_seg, q_pos, kv_seg, kv_pos, cfg: RingConfig):
    return dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos, kv_positions=kv_pos,
                causal=cfg.causal, scale=cfg.scale, impl=cfg.impl)


def _block_forward(q, k, v, q_seg, q_pos, kv_seg, kv_pos, cfg: RingConfig):
    """(out, lse) of one sub-block, or (0, -inf) when the mask empties it."""

    def compute(_):
        return kernels.flash_attention(q, k, v, **_kernel_args(q_seg, q_pos, kv_seg, kv_pos, cfg))

    def skip(_):
        batch, length, heads, _ = q.shape
        return jnp.zeros_like(q), jnp.full((batch, heads, length), -jnp.inf, jnp.float32)

    live = block_may_attend(q_seg, q_pos, kv_seg, kv_pos, causal=cfg.causal, xp=jnp)
    return lax.cond(live, compute, skip, None)


def _block_backward(q, k, v, out, lse, dout, delta, q_seg, q_pos, kv_seg, kv_pos, cfg: RingConfig):
    """(dq, dk, dv) float32 of one sub-block, zeros when the mask empties it. ``delta``: the query
    rows' ``kernels.attention_delta``, computed once for every step of the ring."""

    def compute(_):
        grads = kernels.flash_attention_bwd(q, k, v, out, lse, dout, delta=delta,
                                            **_kernel_args(q_seg, q_pos, kv_seg, kv_pos, cfg))
        return tuple(g.astype(jnp.float32) for g in grads)

    def skip(_):
        return tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))

    live = block_may_attend(q_seg, q_pos, kv_seg, kv_pos, causal=cfg.causal, xp=jnp)
    return lax.cond(live, compute, skip, None)


def _forward(q, k, v, segment_ids, positions, cfg: RingConfig):
    """-> out ``[B, n, Hq, D]`` (q's dtype), lse float32 ``[B, Hq, n]``."""
    batch, length, heads, head_dim = q.shape
    sub = _sub_count(length, cfg.ring_size)
    size = length // sub

    def attend(kv, acc):
        """Merge this step's K/V into the float32 (out, lse) accumulators, sub-block pair by pair."""
        k_step, v_step, kv_seg, kv_pos = kv

        def pair(p, acc):
            i, j = p // sub, p % sub
            out_acc, lse_acc = acc
            part = _block_forward(_rows(q, i, size), _rows(k_step, j, size), _rows(v_step, j, size),
                                  _rows(segment_ids, i, size), _rows(positions, i, size),
                                  _rows(kv_seg, j, size), _rows(kv_pos, j, size), cfg)
            out_i, lse_i = kernels.merge_partials(_rows(out_acc, i, size), _rows(lse_acc, i, size, axis=2), *part)
            return _put_rows(out_acc, out_i, i), _put_rows(lse_acc, lse_i, i, axis=2)

        return lax.fori_loop(0, sub * sub, pair, acc)

    def step(_, carry):
        kv, acc = carry
        kv_next = _send_next(kv, cfg)  # issued before this step's compute: they overlap
        return kv_next, attend(kv, acc)

    acc = (jnp.zeros((batch, length, heads, head_dim), jnp.float32),
           jnp.full((batch, heads, length), -jnp.inf, jnp.float32))
    kv = (k, v, segment_ids, positions)
    # Steps 0 .. R-2 send on; the last step only computes (R-1 transfers in all).
    if cfg.ring_size > 1:
        kv, acc = lax.fori_loop(0, cfg.ring_size - 1, step, (kv, acc))
    out, lse = attend(kv, acc)
    return out.astype(q.dtype), lse


def _backward(q, k, v, segment_ids, positions, out, lse, dout, cfg: RingConfig):
    """-> dq, dk, dv in the dtypes of q, k, v (accumulated in float32)."""
    length = q.shape[1]
    sub = _sub_count(length, cfg.ring_size)
    size = length // sub
    delta = kernels.attention_delta(out, dout, lse)  # one row sum, not one per step and sub-block pair

    def attend_grad(kv, dq_acc, dkv_received):
        """Add this step's gradients: dQ into ``dq_acc``; dK/dV (w.r.t. this step's K/V)
        into ``dkv_received``, the accumulator of the K/V's owner.  The kernels start
        from zeros so they need not wait for ``dkv_received`` to arrive."""
        k_step, v_step, kv_seg, kv_pos = kv

        def pair(p, grads):
            i, j = p // sub, p % sub
            dq_acc, dk_acc, dv_acc = grads
            dq, dk, dv = _block_backward(
                _rows(q, i, size), _rows(k_step, j, size), _rows(v_step, j, size), _rows(out, i, size),
                _rows(lse, i, size, axis=2), _rows(dout, i, size), _rows(delta, i, size, axis=2),
                _rows(segment_ids, i, size), _rows(positions, i, size), _rows(kv_seg, j, size),
                _rows(kv_pos, j, size), cfg)
            return (_put_rows(dq_acc, _rows(dq_acc, i, size) + dq, i),
                    _put_rows(dk_acc, _rows(dk_acc, j, size) + dk, j),
                    _put_rows(dv_acc, _rows(dv_acc, j, size) + dv, j))

        zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
        dq_acc, dk_step, dv_step = lax.fori_loop(0, sub * sub, pair, (dq_acc, *zeros))
        if dkv_received is None:
            return dq_acc, (dk_step, dv_step)
        return dq_acc, (dkv_received[0] + dk_step, dkv_received[1] + dv_step)

    # Software pipelined: the dK/dV accumulator finished at step t-1 is sent at the
    # start of step t, together with the K/V of step t+1, so both transfers run under
    # step t's compute.  Step 0 (nothing to send on yet) and step R-1 (no K/V to send)
    # are peeled; only the final send home is exposed.
    kv = (k, v, segment_ids, positions)
    if cfg.ring_size == 1:  # no ring: the single-device kernel's backward
        dq_acc, (dk, dv) = attend_grad(kv, jnp.zeros(q.shape, jnp.float32), None)
        return dq_acc.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)
    kv_next = _send_next(kv, cfg)
    dq_acc, dkv_unsent = attend_grad(kv, jnp.zeros(q.shape, jnp.float32), None)

    def step(_, carry):
        kv, dq_acc, dkv_unsent = carry
        kv_next = _send_next(kv, cfg)
        dkv_received = _send_next(dkv_unsent, cfg)
        dq_acc, dkv_unsent = attend_grad(kv, dq_acc, dkv_received)
        return kv_next, dq_acc, dkv_unsent

    kv, dq_acc, dkv_unsent = lax.fori_loop(1, cfg.ring_size - 1, step, (kv_next, dq_acc, dkv_unsent))
    dq_acc, dkv_unsent = attend_grad(kv, dq_acc, _send_next(dkv_unsent, cfg))
    dk, dv = _send_next(dkv_unsent, cfg)  # every accumulator arrives at its owner
    return dq_acc.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ring(q, k, v, segment_ids, positions, cfg):
    return _forward(q, k, v, segment_ids, positions, cfg)[0]


def _ring_fwd(q, k, v, segment_ids, positions, cfg):
    out, lse = _forward(q, k, v, segment_ids, positions, cfg)
    # Named so that a remat policy can keep them and never re-run the ring forward
    # (LightSeq's rematerialization-aware checkpointing): OUT_NAME and LSE_NAME.
    out, lse = checkpoint_name(out, OUT_NAME), checkpoint_name(lse, LSE_NAME)
    return out, (q, k, v, segment_ids, positions, out, lse)


def _ring_bwd(cfg, residuals, dout):
    q, k, v, segment_ids, positions, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, segment_ids, positions, out, lse, dout, cfg)
    return dq, dk, dv, None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q, k, v, segment_ids, positions, *, ring_size: int, causal: bool,
                   scale: float | None = None, impl: str = "auto", axis_name: str = AXIS):
    """Attention of this rank's queries over the keys of all R ranks.

    q ``[B, n, Hq, D]``, k/v ``[B, n, Hkv, D]``, ids/positions int32
    ``[B, n]`` (this rank's slice) -> out ``[B, n, Hq, D]``.  Differentiable
    (custom VJP, second ring pass).
    """
    cfg = RingConfig(ring_size=ring_size, causal=causal, scale=scale, impl=impl, axis_name=axis_name)
    return _ring(q, k, v, segment_ids, positions, cfg)
