"""The backward's per-query-row statistics: ``delta = rowsum(dout * out) - dlse`` and lse in base 2.

The row sum reads out and dout once (2 x 2 bytes per element); everything after it touches
``[B, H, S]`` float32 only. XLA on GPU fused the row sum into the transposing and stacking that
follow it, and that fusion ran at about an eighth of the memory bandwidth (217 us at 8k tokens,
32 heads, on an H200: kernels/NOTES.md), so the row sum is kept apart by an optimization barrier.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

LOG2E = math.log2(math.e)


def row_sum(out, dout):
    """float32 ``[B, S, H]``: ``sum_d dout * out`` of ``[B, S, H, D]`` arrays, in a fusion of its own."""
    return lax.optimization_barrier(jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1))


def softmax_delta(out, dout, lse, dlse):
    """float32 ``[B, Hq, Sq]``: rowsum(dout * out) - dlse, 0 on rows with lse = -inf."""
    delta = row_sum(out, dout).transpose(0, 2, 1)
    if dlse is not None:
        delta = delta - dlse.astype(jnp.float32)
    return masked_delta(lse, delta)


def masked_delta(lse, delta):
    """float32 ``delta`` ``[B, Hq, Sq]``, 0 on rows with lse = -inf (their p is 0; a given delta may
    hold anything there)."""
    return jnp.where(jnp.isfinite(lse), delta.astype(jnp.float32), 0.0)


def backward_delta(out, dout, lse, dlse, delta=None):
    """The backward's delta: ``delta`` when the caller computed it (:func:`softmax_delta` once for
    several calls on the same rows, e.g. the steps of a ring), else :func:`softmax_delta`."""
    if delta is None:
        return softmax_delta(out, dout, lse, dlse)
    return masked_delta(lse, delta)


def lse_base2(lse):
    """float32 ``[B, Hq, Sq]``: lse in base 2, +inf on empty rows (so that ``exp2(s - lse) = 0``)."""
    lse = lse.astype(jnp.float32)
    return jnp.where(jnp.isfinite(lse), lse * LOG2E, jnp.inf)
