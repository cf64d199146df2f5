"""Load-balanced device order of a packed row (host side, NumPy).

The sequence axis is sharded over ``("ring", "ulysses")``, ring major: ring
rank ``r`` holds the contiguous device-order slice ``[r*S/R, (r+1)*S/R)``.
Under a causal mask the natural order gives the last rank about twice the
mean work.  The zigzag order fixes that per sample:

* Every sample (a maximal run of one non-zero segment id in natural order)
  is cut into ``2R`` contiguous chunks ``0 .. 2R-1`` in natural order.
* Ring rank ``r`` takes chunk ``r`` into the first half of its slice and
  chunk ``2R-1-r`` into the second half.  So the device slice of rank ``r``
  is ``[chunk r of sample 1, chunk r of sample 2, ..., pad |
  chunk 2R-1-r of sample 1, chunk 2R-1-r of sample 2, ..., pad]``, each half
  ``S/(2R)`` tokens long.

Padding rule.  A sample of length ``L`` gives every chunk ``L // 2R``
tokens; the ``L % 2R`` chunks that get one extra token are those whose half
slots are least filled so far (ties to the lowest chunk index), so all half
slots stay within one token of each other and every sample fits.  Padding
tokens (segment 0, from anywhere in the row) then fill every half slot to
exactly ``S/(2R)`` at its end.  Hence ``S`` must be a multiple of ``2R``.
Tokens inside a half slot keep their natural order.

The order only changes speed: ``sp.attention`` is exact for any order,
because the mask is computed from segment ids and positions.
"""

from __future__ import annotations

import numpy as np


def sample_runs(segment_ids: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the maximal runs of one non-zero id in a row ``[S]``."""
    ids = np.asarray(segment_ids)
    if ids.ndim != 1:
        raise ValueError(f"segment_ids must be one row [S], got shape {ids.shape}")
    edges = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [ids.size]])
    return [(int(s), int(e)) for s, e in zip(starts, ends) if ids.size and ids[s] != 0]


def chunk_rank(chunk: int, ring_size: int) -> tuple[int, int]:
    """``(ring rank, half)`` that zigzag chunk ``chunk`` (of ``2R``) lands on."""
    if chunk < ring_size:
        return chunk, 0
    return 2 * ring_size - 1 - chunk, 1


def _balanced_row(ids: np.ndarray, ring_size: int) -> np.ndarray:
    size = ids.size
    num_chunks = 2 * ring_size
    capacity = size // num_chunks
    fill = np.zeros(num_chunks, np.int64)
    members: list[list[np.ndarray]] = [[] for _ in range(num_chunks)]
    for start, end in sample_runs(ids):
        base, extra = divmod(end - start, num_chunks)
        sizes = np.full(num_chunks, base, np.int64)
        if extra:
            sizes[np.argsort(fill, kind="stable")[:extra]] += 1
        bounds = start + np.concatenate([[0], np.cumsum(sizes)])
        for chunk in range(num_chunks):
            members[chunk].append(np.arange(bounds[chunk], bounds[chunk + 1]))
        fill += sizes
    padding = np.flatnonzero(ids == 0)
    taken = 0
    for chunk in range(num_chunks):
        need = capacity - int(fill[chunk])
        assert need >= 0, "zigzag invariant broken: a half slot overflowed"
        members[chunk].append(padding[taken:taken + need])
        taken += need
    assert taken == padding.size
    slots = []
    for rank in range(ring_size):
        for chunk in (rank, num_chunks - 1 - rank):
            slots.extend(members[chunk])
    return np.concatenate(slots).astype(np.int32)


def balanced_order(segment_ids: np.ndarray, ring_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag device order of a packed row and its inverse.

    Args:
      segment_ids: int ``[S]`` in natural order, 0 = padding (``[B, S]``
        gives one order per row).
      ring_size: size ``R`` of the mesh's ``ring`` axis; ``S % (2R) == 0``.

    Returns:
      ``(order, inverse)``, int32 permutations of the same shape:
      ``device_array = natural_array[order]`` and
      ``natural_array = device_array[inverse]`` (per row for ``[B, S]``; use
      ``np.take_along_axis``).
    """
    ids = np.asarray(segment_ids)
    if ring_size < 1:
        raise ValueError(f"ring_size must be >= 1, got {ring_size}")
    if ids.ndim == 2:
        pairs = [balanced_order(row, ring_size) for row in ids]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if ids.ndim != 1:
        raise ValueError(f"segment_ids must be [S] or [B, S], got shape {ids.shape}")
    if ids.size % (2 * ring_size):
        raise ValueError(
            f"balanced_order needs the row length {ids.size} to be a multiple of 2*ring_size = "
            f"{2 * ring_size} (two zigzag chunks per ring rank); pad the row to a multiple of {2 * ring_size}"
        )
    order = _balanced_row(ids, ring_size)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size, dtype=order.dtype)
    return order, inverse
