"""Attention work per ring rank for a device order (host side, NumPy).

Counts, for each ring rank ``r`` (its queries) and each ring rank ``r'``
(whose keys it meets at one ring step), the exact number of unmasked
query-key pairs, and the number of sub-blocks the ring computes after its
range-based skip (``blocks.block_may_attend``, the same test the device runs).
Ulysses members of a ring rank split its work evenly by heads, so per ring
rank is per device up to that constant.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from longvila_jax.sp.blocks import block_may_attend


@dataclasses.dataclass(frozen=True)
class WorkReport:
    """``pairs[r, r']``: unmasked pairs of queries on rank r with keys on rank r';
    ``blocks[r, r']``: non-skipped sub-blocks (of ``sub_blocks**2``) of that step."""

    pairs: np.ndarray
    blocks: np.ndarray
    sub_blocks: int

    @property
    def pairs_per_rank(self) -> np.ndarray:
        return self.pairs.sum(axis=1)

    @property
    def blocks_per_rank(self) -> np.ndarray:
        return self.blocks.sum(axis=1)

    @property
    def imbalance(self) -> float:
        """max/mean of unmasked pairs over ring ranks (1.0 = perfect)."""
        per = self.pairs_per_rank
        return float(per.max() / max(per.mean(), 1e-30))

    @property
    def block_imbalance(self) -> float:
        """max/mean of non-skipped sub-blocks over ring ranks."""
        per = self.blocks_per_rank
        return float(per.max() / max(per.mean(), 1e-30))


def _visible_counts(q_seg, q_pos, kv_seg, kv_pos, causal, pos_min, pos_span):
    """Per query: number of keys with the same non-zero segment (and pos <= its pos)."""
    valid = kv_seg != 0
    kv_keys = np.sort(kv_seg[valid].astype(np.int64) * pos_span + (kv_pos[valid] - pos_min))
    base = q_seg.astype(np.int64) * pos_span
    upper = base + (q_pos - pos_min) if causal else base + (pos_span - 1)
    counts = np.searchsorted(kv_keys, upper, side="right") - np.searchsorted(kv_keys, base, side="left")
    return np.where(q_seg != 0, counts, 0)


def attention_work(segment_ids, positions, ring_size, *, order=None, causal=True, sub_blocks=2) -> WorkReport:
    """Work per ring rank of one packed row (or a batch of rows, summed).

    Args:
      segment_ids, positions: int ``[S]`` or ``[B, S]`` in natural order.
      ring_size: ``R``; ``S % R == 0``.
      order: device order (``device = natural[order]``, per row for 2-D), or
        None for the contiguous natural order.
      causal: mask kind.
      sub_blocks: the ring splits each rank's slice into this many sub-blocks
        for skipping (2 in ``sp.ring``; 1 when ``S/R`` is odd).
    """
    seg = np.atleast_2d(np.asarray(segment_ids))
    pos = np.atleast_2d(np.asarray(positions))
    if order is not None:
        idx = np.atleast_2d(np.asarray(order))
        seg = np.take_along_axis(seg, idx, axis=1)
        pos = np.take_along_axis(pos, idx, axis=1)
    rows, size = seg.shape
    if size % ring_size:
        raise ValueError(f"sequence length {size} does not divide by ring_size {ring_size}")
    local = size // ring_size
    sub = sub_blocks if local % sub_blocks == 0 else 1
    pos_min = int(pos.min()) if pos.size else 0
    pos_span = int(pos.max()) - pos_min + 1 if pos.size else 1
    seg_r = seg.reshape(rows, ring_size, local)
    pos_r = pos.reshape(rows, ring_size, local)
    pairs = np.zeros((ring_size, ring_size), np.int64)
    blocks = np.zeros((ring_size, ring_size), np.int64)
    for q_rank in range(ring_size):
        for kv_rank in range(ring_size):
            for b in range(rows):
                pairs[q_rank, kv_rank] += _visible_counts(
                    seg_r[b, q_rank], pos_r[b, q_rank], seg_r[b, kv_rank], pos_r[b, kv_rank],
                    causal, pos_min, pos_span).sum()
            q_seg = seg_r[:, q_rank].reshape(rows, sub, -1)
            q_pos = pos_r[:, q_rank].reshape(rows, sub, -1)
            kv_seg = seg_r[:, kv_rank].reshape(rows, sub, -1)
            kv_pos = pos_r[:, kv_rank].reshape(rows, sub, -1)
            for i in range(sub):
                for j in range(sub):
                    blocks[q_rank, kv_rank] += bool(block_may_attend(
                        q_seg[:, i], q_pos[:, i], kv_seg[:, j], kv_pos[:, j], causal=causal))
    return WorkReport(pairs=pairs, blocks=blocks, sub_blocks=sub)
