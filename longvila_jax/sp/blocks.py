"""Which attention blocks the mask leaves non-empty, from range summaries.

The mask: query i attends key j iff ``seg[i] == seg[j] != 0`` and, when
causal, ``pos[j] <= pos[i]``.  A block (a set of queries times a set of keys)
is provably empty when

* one side has no valid (non-zero segment) token, or
* the valid segment ranges ``[min, max]`` of queries and keys are disjoint, or
* (causal) the smallest key in ``(segment, position)`` lexicographic order is
  larger than the largest query in that order: any attended pair has
  ``seg[j] == seg[i]`` and ``pos[j] <= pos[i]``, so ``key(j) <= key(i)``.

The test is conservative (it may keep an empty block, never skips a live
one) and costs O(block length).  The same function runs on device inside the
ring (``xp=jax.numpy``) and on the host in the work report (``xp=numpy``),
so the report counts exactly the blocks the ring computes.
"""

from __future__ import annotations

import numpy as np

_BIG = np.iinfo(np.int32).max
_SMALL = np.iinfo(np.int32).min


def block_may_attend(q_segment_ids, q_positions, kv_segment_ids, kv_positions, *, causal, xp=np):
    """Scalar bool: may any query of any row attend any key of the same row.

    q ids/positions ``[..., Sq]``, kv ids/positions ``[..., Sk]`` (int32;
    leading axes are batch rows, tested separately, result OR-ed).
    """
    q_valid = q_segment_ids != 0
    kv_valid = kv_segment_ids != 0
    q_seg_max = xp.where(q_valid, q_segment_ids, _SMALL).max(axis=-1)
    q_seg_min = xp.where(q_valid, q_segment_ids, _BIG).min(axis=-1)
    kv_seg_max = xp.where(kv_valid, kv_segment_ids, _SMALL).max(axis=-1)
    kv_seg_min = xp.where(kv_valid, kv_segment_ids, _BIG).min(axis=-1)
    live = (q_seg_max >= kv_seg_min) & (kv_seg_max >= q_seg_min)
    if causal:
        at_q_max = q_valid & (q_segment_ids == q_seg_max[..., None])
        at_kv_min = kv_valid & (kv_segment_ids == kv_seg_min[..., None])
        q_pos_last = xp.where(at_q_max, q_positions, _SMALL).max(axis=-1)
        kv_pos_first = xp.where(at_kv_min, kv_positions, _BIG).min(axis=-1)
        live = live & ((kv_seg_min < q_seg_max) | (kv_pos_first <= q_pos_last))
    return xp.any(live)
