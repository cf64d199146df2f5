"""Device order of packed rows and the batch of a step (frames, validity mask, frame plan).

The sequence axis is sharded over ``("ring", "ulysses")``, ring major
(DESIGN.md). :func:`device_order_row` permutes every per-token array of a
natural-order row (``packing.ROW_KEYS``) into the load-balanced zigzag order
of ``sp.balanced_order``: ``device[k] = natural[order[k]]``; it adds
``natural_index`` int32 ``[S]`` (``= order``: the natural position of the
token in device slot ``k``), so ``natural = device[argsort(natural_index)]``.

The frame plan rides on the per-token arrays: in device order, slot ``k``
is fed by visual token ``frame_token[k]`` of frame ``frame_index[k]`` (an
index into the step's ``frames``), or is text when ``frame_index[k] == -1``.
Device ``d`` of the sequence axis holds slots ``[d*S/P, (d+1)*S/P)``, so it
can gather its visual tokens from the frames' owners with this plan alone.

:func:`make_batch` stacks ``B`` rows and their frames: ``frames`` float32
``[F, H, W, 3]`` with ``F`` static (``frames_per_batch``, a multiple of the
number of devices that encode frames) and ``frame_valid`` bool ``[F]``; the
frames of row ``b`` follow those of rows ``< b``, each row's in reading order.
"""

from __future__ import annotations

import math

import numpy as np

from longvila_jax.data.packing import ROW_KEYS


def _balanced_order():
    try:
        from longvila_jax.sp import balanced_order
    except ImportError as e:  # pragma: no cover - the sp layer is part of the package
        raise ImportError("the device order needs longvila_jax.sp.balanced_order (the sequence-parallel layer)") from e
    return balanced_order


def seq_multiple(ring_size: int, ulysses_size: int = 1) -> int:
    """Row lengths must be multiples of this: 2 zigzag chunks per ring rank, each split over Ulysses."""
    return math.lcm(2 * ring_size, ring_size * ulysses_size)


def check_seq_len(seq_len: int, ring_size: int, ulysses_size: int = 1) -> None:
    multiple = seq_multiple(ring_size, ulysses_size)
    if seq_len <= 0 or seq_len % multiple:
        raise ValueError(
            f"seq_len {seq_len} must be a positive multiple of {multiple} for ring={ring_size}, "
            f"ulysses={ulysses_size} (2 zigzag chunks per ring rank, split over Ulysses); "
            f"use {max(multiple, seq_len // multiple * multiple)} or {(seq_len // multiple + 1) * multiple}"
        )


def device_order_row(row: dict[str, np.ndarray], ring_size: int) -> dict[str, np.ndarray]:
    """Natural-order row (``ROW_KEYS`` arrays ``[S]``) -> the same arrays in device order, plus ``natural_index``."""
    order, _ = _balanced_order()(row["segment_ids"], ring_size)
    out = {key: row[key][order] for key in ROW_KEYS}
    out["natural_index"] = order.astype(np.int32)
    return out


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def make_batch(rows: list[dict], row_frames: list[list[np.ndarray]], *, ring_size: int, frames_per_batch: int,
               frame_shape: tuple[int, int], frame_multiple: int = 1) -> dict[str, np.ndarray]:
    """One step: ``B`` natural-order rows (``frame_index`` numbered from 0 per row) and their frames.

    Returns ``[B, S]`` arrays in device order (``ROW_KEYS`` + ``natural_index``;
    ``frame_index`` now indexes the batch's frames), ``frames`` float32
    ``[F, H, W, 3]`` and ``frame_valid`` bool ``[F]`` with ``F = frames_per_batch``
    (must be a multiple of ``frame_multiple``), or the smallest multiple of
    ``frame_multiple`` holding the frames when ``frames_per_batch`` is 0.
    """
    counts = [sum(int(f.shape[0]) for f in frames) for frames in row_frames]
    total = sum(counts)
    capacity = frames_per_batch or round_up(max(total, 1), frame_multiple)
    if capacity % frame_multiple:
        raise ValueError(f"frames_per_batch {capacity} is not a multiple of frame_multiple {frame_multiple}")
    if total > capacity:
        raise ValueError(f"a step holds {total} frames but frames_per_batch is {capacity}; "
                         f"raise frames_per_batch or lower max_frames_per_row")
    height, width = frame_shape
    frames = np.zeros((capacity, height, width, 3), np.float32)
    valid = np.zeros(capacity, bool)
    ordered = []
    offset = 0
    for row, chunks, count in zip(rows, row_frames, counts):
        for chunk in chunks:
            frames[offset:offset + chunk.shape[0]] = chunk
            offset += chunk.shape[0]
        shifted = dict(row)
        shifted["frame_index"] = np.where(row["frame_index"] >= 0, row["frame_index"] + (offset - count), -1
                                          ).astype(np.int32)
        ordered.append(device_order_row(shifted, ring_size))
    valid[:total] = True
    batch = {key: np.stack([r[key] for r in ordered]) for key in ordered[0]}
    batch["frames"] = frames
    batch["frame_valid"] = valid
    return batch
