"""The attention mask of the whole project, elementwise and per token.

Token i (a query) sees token j (a key) iff
``q_segment_ids[i] == kv_segment_ids[j] != 0`` and, when causal,
``kv_positions[j] <= q_positions[i]``. Segment id 0 marks padding.
"""

from __future__ import annotations

import jax.numpy as jnp


def default_segment_ids(batch: int, length: int):
    """All tokens in segment 1: int32 ``[batch, length]``."""
    return jnp.ones((batch, length), jnp.int32)


def default_positions(batch: int, length: int):
    """Positions ``0 .. length-1`` on every row: int32 ``[batch, length]``."""
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def visible(q_segment_ids, q_positions, kv_segment_ids, kv_positions, *, causal: bool):
    """Boolean ``[B, Sq, Sk]``: may query i see key j.

    q ids/positions ``[B, Sq]``, kv ids/positions ``[B, Sk]``.
    """
    q_seg = q_segment_ids[:, :, None]
    kv_seg = kv_segment_ids[:, None, :]
    mask = (q_seg == kv_seg) & (q_seg != 0)
    if causal:
        mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
    return mask


def pad_tokens(segment_ids, positions, length: int):
    """Pad ``[B, S]`` ids (with 0 = padding) and positions (with 0) to ``[B, length]``."""
    extra = length - segment_ids.shape[1]
    if extra == 0:
        return segment_ids, positions
    pad = ((0, 0), (0, extra))
    return jnp.pad(segment_ids, pad), jnp.pad(positions, pad)
