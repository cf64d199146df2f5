"""Which (query block, key block) tiles the mask can leave non-empty.

A tile is skipped when the segment ranges of its two blocks do not overlap,
when either block holds only padding, or (causal) when the smallest key
position exceeds the largest query position. Ranges ignore padding tokens,
so padded tails never keep a tile alive. The test is conservative: a visited
tile may still be empty (then the elementwise mask zeroes it); a skipped tile
is always empty.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .mask import pad_tokens

_BIG = jnp.iinfo(jnp.int32).max
_SMALL = jnp.iinfo(jnp.int32).min


class BlockRanges(NamedTuple):
    """Per block, over its non-padding tokens; each int32 ``[B, n_blocks]``.

    A block of padding only has min = int32 max and max = int32 min.
    """

    segment_min: jnp.ndarray
    segment_max: jnp.ndarray
    position_min: jnp.ndarray
    position_max: jnp.ndarray


def block_ranges(segment_ids, positions, block: int) -> BlockRanges:
    """Segment and position ranges of each ``block`` tokens of ``[B, S]`` ids.

    S need not be a multiple of ``block``: the tail is padded with segment 0.
    """
    batch, length = segment_ids.shape
    n_blocks = -(-length // block)
    segment_ids, positions = pad_tokens(segment_ids, positions, n_blocks * block)
    seg = segment_ids.reshape(batch, n_blocks, block)
    pos = positions.reshape(batch, n_blocks, block)
    real = seg != 0
    return BlockRanges(
        segment_min=jnp.where(real, seg, _BIG).min(-1),
        segment_max=jnp.where(real, seg, _SMALL).max(-1),
        position_min=jnp.where(real, pos, _BIG).min(-1),
        position_max=jnp.where(real, pos, _SMALL).max(-1),
    )


def block_visit_mask(q_segment_ids, q_positions, kv_segment_ids, kv_positions, *,
                     causal: bool, block_q: int, block_k: int):
    """Boolean ``[B, n_q_blocks, n_kv_blocks]``: tiles the kernel must compute."""
    q = block_ranges(q_segment_ids, q_positions, block_q)
    kv = block_ranges(kv_segment_ids, kv_positions, block_k)
    q_seg_min, q_seg_max = q.segment_min[:, :, None], q.segment_max[:, :, None]
    kv_seg_min, kv_seg_max = kv.segment_min[:, None, :], kv.segment_max[:, None, :]
    # Padding-only blocks have min > max and so overlap nothing.
    visit = (q_seg_min <= kv_seg_max) & (kv_seg_min <= q_seg_max)
    visit &= (q_seg_min <= q_seg_max) & (kv_seg_min <= kv_seg_max)
    if causal:
        visit &= kv.position_min[:, None, :] <= q.position_max[:, :, None]
    return visit
