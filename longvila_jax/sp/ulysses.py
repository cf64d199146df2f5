"""Ulysses: trade the sequence shard for a head shard with one all-to-all.

Runs inside ``shard_map``.  Device ``u`` of the ``ulysses`` axis (size U)
holds ``[B, n, H, D]``, the ``u``-th of U consecutive sequence pieces of its
ring member's slice.  ``seq_to_heads`` gives it ``[B, U*n, H/U, D]``: the
whole slice (pieces in ulysses-rank order, i.e. device order) for heads
``[u*H/U, (u+1)*H/U)``.  ``heads_to_seq`` is the exact inverse.

GQA: query head ``h`` reads K/V head ``h // (Hq/Hkv)``.  K/V heads are
repeated ``kv_head_repeats(Hkv, U) = lcm(Hkv, U) / Hkv`` times (each head's
copies adjacent) so that they split evenly over U; ``lcm(Hkv, U)`` divides
Hq, and after the split device u's query heads still read their own K/V heads
through the same ``h // group`` rule.  This is 1 when U divides Hkv, and
``U/Hkv`` when Hkv divides U: K/V are never repeated up to Hq unless
``lcm(Hkv, U) == Hq``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

AXIS = "ulysses"


def kv_head_repeats(kv_heads: int, ulysses_size: int) -> int:
    """Copies of each K/V head needed so the K/V heads split evenly over Ulysses."""
    return math.lcm(kv_heads, ulysses_size) // kv_heads


def seq_to_heads(x, axis_name: str = AXIS):
    """``[B, n, H, D]`` sequence piece -> ``[B, U*n, H/U, D]`` head group."""
    return lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True)


def heads_to_seq(x, axis_name: str = AXIS):
    """``[B, U*n, H/U, D]`` head group -> ``[B, n, H, D]`` sequence piece."""
    return lax.all_to_all(x, axis_name, split_axis=1, concat_axis=2, tiled=True)


def gather_tokens(x, axis_name: str = AXIS):
    """Per-token ``[B, n]`` (ids, positions) -> ``[B, U*n]`` of the whole slice."""
    return lax.all_gather(x, axis_name, axis=1, tiled=True)


def ulysses_attention(inner, q, k, v, segment_ids, positions, *, ulysses_size: int, axis_name: str = AXIS):
    """Ulysses around ``inner``, the attention of one ring member's slice.

    q ``[B, n, Hq, D]``, k/v ``[B, n, Hkv, D]``, ids/positions ``[B, n]``
    (this device's piece) -> ``[B, n, Hq, D]``.  ``inner(q, k, v, ids, pos)``
    sees ``[B, U*n, Hq/U, D]`` and ``[B, U*n, lcm(Hkv,U)/U, D]``.
    Differentiable: the all-to-alls transpose into each other.
    """
    repeats = kv_head_repeats(k.shape[2], ulysses_size)
    if repeats > 1:
        k = jnp.repeat(k, repeats, axis=2)
        v = jnp.repeat(v, repeats, axis=2)
    out = inner(
        seq_to_heads(q, axis_name), seq_to_heads(k, axis_name), seq_to_heads(v, axis_name),
        gather_tokens(segment_ids, axis_name), gather_tokens(positions, axis_name),
    )
    return heads_to_seq(out, axis_name)
