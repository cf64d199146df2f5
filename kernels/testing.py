"""Random attention inputs for tests (here and in ``longvila_jax.sp``).

Token layouts follow the data contract: packed samples with segment ids
1, 2, ... and positions restarting at 0 per sample, padding with segment 0,
optionally shuffled into a random device order.
"""

from __future__ import annotations

import numpy as np


def packed_layout(rng: np.random.Generator, batch: int, length: int, *, max_segments: int = 3,
                  pad_fraction: float = 0.15, shuffle: bool = False):
    """Segment ids and positions, int32 ``[batch, length]``.

    Each row packs 1..max_segments samples of random lengths into about
    ``(1 - pad_fraction) * length`` tokens, then pads with segment 0 (position
    0). With ``shuffle`` each row is put in its own random token order.
    """
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    for row in range(batch):
        used = max(1, length - int(rng.integers(0, int(pad_fraction * length) + 1)))
        n_segments = int(rng.integers(1, max_segments + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), size=min(n_segments - 1, used - 1), replace=False))
        bounds = np.concatenate([[0], cuts, [used]])
        for seg, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
            segment_ids[row, lo:hi] = seg
            positions[row, lo:hi] = np.arange(hi - lo)
        if shuffle:
            order = rng.permutation(length)
            segment_ids[row], positions[row] = segment_ids[row, order], positions[row, order]
    return segment_ids, positions


def query_key_layouts(rng: np.random.Generator, batch: int, q_len: int, kv_len: int, **layout):
    """Query and key tokens drawn (without replacement) from one packed layout of
    ``max(q_len, kv_len)`` tokens, as a ring step sees them:
    ``(q_segment_ids, q_positions, kv_segment_ids, kv_positions)``."""
    length = max(q_len, kv_len)
    segment_ids, positions = packed_layout(rng, batch, length, **layout)
    picked = []
    for size in (q_len, kv_len):
        idx = np.stack([np.sort(rng.choice(length, size, replace=False)) for _ in range(batch)])
        picked += [np.take_along_axis(segment_ids, idx, 1), np.take_along_axis(positions, idx, 1)]
    q_seg, q_pos, kv_seg, kv_pos = picked
    return q_seg, q_pos, kv_seg, kv_pos


def random_qkv(rng: np.random.Generator, batch: int, q_len: int, kv_len: int, q_heads: int,
               kv_heads: int, head_dim: int, dtype=np.float32):
    """Standard normal q ``[B, Sq, Hq, D]``, k and v ``[B, Sk, Hkv, D]`` (numpy)."""
    q = rng.standard_normal((batch, q_len, q_heads, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(dtype)
    return q, k, v


def rising_scores_qkv(rng: np.random.Generator, q_len: int, kv_len: int, q_heads: int, kv_heads: int,
                      head_dim: int, *, max_rise: float, block: int = 128):
    """float32 q ``[1, q_len, q_heads, D]``, k, v ``[1, kv_len, kv_heads, D]`` whose scores (at scale
    ``D ** -0.5``) rise along the keys: for query row i about ``rise_i * j / block`` in base 2 for key j,
    with ``rise_i`` uniform in ``[0, max_rise]`` per row and head, plus noise. So a running row max moves
    by up to ``max_rise`` per key block: online softmax rescaling on every block, or on none."""
    direction = rng.standard_normal(head_dim)
    direction /= np.linalg.norm(direction)
    rise = rng.uniform(0.0, max_rise, (1, q_len, q_heads, 1)) * np.log(2.0)  # natural units per block
    q = rise * direction * np.sqrt(head_dim) + 0.3 * rng.standard_normal((1, q_len, q_heads, head_dim))
    k = (np.arange(kv_len) / block)[None, :, None, None] * direction
    k = k + 0.3 * rng.standard_normal((1, kv_len, kv_heads, head_dim)) / np.sqrt(head_dim)
    v = rng.standard_normal((1, kv_len, kv_heads, head_dim))
    return q, k, v


def rel_err(actual, expected) -> float:
    """``|actual - expected| / |expected|`` in the Frobenius norm, in float64 (0-norm references guarded)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))
