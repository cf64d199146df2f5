"""What the Mosaic GPU kernels read besides q, k, v: padded token arrays and per-block visit lists.

All of it is plain XLA, computed once per call outside the kernels.

* Token arrays int32 ``[B, 2, S_pad]``: row 0 the segment ids, row 1 the
  positions, padded with segment 0 to a multiple of the block (so the
  kernel's masked tails are padding tokens, which see and are seen by nothing).
* Visit lists int32 ``[B, n_resident, rows, LIST_ROW]`` (or ``[.., 1, width]``
  when ``HEADER + n_streamed`` fits one row; rows of a multiple of 32 entries,
  128 bytes, so that lists can sit side by side as TMA destinations; a TMA box is
  at most 256 per axis), one per resident block, longest
  first: work item ``r`` (a CTA, or a turn of a persistent CTA: :mod:`.mosaic_schedule`)
  takes list ``r``, so the longest tile loops start first and the short ones
  fill the end of the launch (for a causal
  dK/dV this cut the kernel's time by 16-19% on an H200). Flat entry 0 is how
  many tiles to visit, entry 1 the resident block; entries ``HEADER ..`` are
  ``4 * block + mask_kind`` of each visited streamed block in increasing
  order. ``mask_kind`` (``MASK_KINDS``) is ``WHOLE`` for a tile the mask keeps
  whole (one segment on both sides, no padding, and when causal every key
  position at most every query position): the kernel skips the elementwise mask
  there; ``POSITIONS`` for a causal tile of one segment on both sides, no
  padding, whose positions cross (the diagonal of a sample): only the position
  test runs; ``FULL`` for every other tile: segment ids and positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .block_skip import block_ranges, block_visit_mask
from .mask import pad_tokens

# int32 entries per 128 bytes: the persistent kernels hold two lists in one SMEM buffer, and the
# second one is a TMA destination too, which must start 128-byte aligned (16-byte rows failed on an
# H200 with CUDA_ERROR_MISALIGNED_ADDRESS)
LIST_ALIGN = 32
LIST_ROW = 256  # the longest TMA box axis
HEADER = 2  # entries before the visited blocks: count, resident block
# A visited tile's mask kind, the low 2 bits of its list entry (module docstring)
WHOLE, POSITIONS, FULL = 0, 1, 2
MASK_KINDS = ("whole", "positions", "full")
KIND_BITS = 2


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def token_array(segment_ids, positions, padded_len: int):
    """int32 ``[B, 2, padded_len]``: segment ids (0 in the padding) over positions."""
    seg, pos = pad_tokens(segment_ids.astype(jnp.int32), positions.astype(jnp.int32), padded_len)
    return jnp.stack([seg, pos], axis=1)


class Tiles(NamedTuple):
    """``visit``, ``whole`` (no mask needed) and ``one_segment`` (both blocks one and the same segment, no
    padding: a causal tile there needs only the position test), boolean ``[B, n_q_blocks, n_kv_blocks]``."""

    visit: jnp.ndarray
    whole: jnp.ndarray
    one_segment: jnp.ndarray


def tile_table(q_seg, q_pos, kv_seg, kv_pos, *, causal: bool, block_q: int, block_k: int) -> Tiles:
    """Which tiles hold visible pairs (conservatively) and which hold only visible pairs."""
    visit = block_visit_mask(q_seg, q_pos, kv_seg, kv_pos, causal=causal, block_q=block_q, block_k=block_k)
    q = block_ranges(q_seg, q_pos, block_q)
    kv = block_ranges(kv_seg, kv_pos, block_k)

    def no_padding(seg, block):
        n_blocks = -(-seg.shape[1] // block)
        padded, _ = pad_tokens(seg, seg, n_blocks * block)
        return (padded.reshape(seg.shape[0], n_blocks, block) != 0).all(-1)

    q_one = (q.segment_min == q.segment_max) & no_padding(q_seg, block_q)
    kv_one = (kv.segment_min == kv.segment_max) & no_padding(kv_seg, block_k)
    one_segment = (q_one[:, :, None] & kv_one[:, None, :]
                   & (q.segment_min[:, :, None] == kv.segment_min[:, None, :]))
    whole = one_segment
    if causal:
        whole = whole & (kv.position_max[:, None, :] <= q.position_min[:, :, None])
    return Tiles(visit=visit, whole=whole & visit, one_segment=one_segment & visit)


def mask_kinds(whole, one_segment=None):
    """int32 ``MASK_KINDS`` index per tile from boolean tables: ``WHOLE``, ``POSITIONS`` where
    ``one_segment`` (None: nowhere), else ``FULL``."""
    positions = jnp.zeros_like(whole) if one_segment is None else one_segment
    return jnp.where(whole, WHOLE, jnp.where(positions, POSITIONS, FULL)).astype(jnp.int32)


def visit_lists(visit, whole, one_segment=None):
    """int32 ``[B, n_resident, rows, row_len]`` from boolean ``[B, n_resident, n_streamed]`` tables
    (see the module docstring; ``one_segment`` None: no ``POSITIONS`` tiles, every tile not whole gets
    the full mask); read flat entry i at ``[i // row_len, i % row_len]``. Entries past a list's count
    are 0.

    Built without sorting (XLA's sorts and gathers were most of the ops of a packed mask's plan on
    the GPU): a list's place is the number of lists longer than it (or as long and earlier; a boolean
    ``[B, n_resident, n_resident]`` comparison, 64 MiB at a million tokens in 128-token blocks), a
    visited block's place in its list the number of visited blocks before it, and one scatter writes
    every entry to its place."""
    batch, n_resident, n_streamed = visit.shape
    row_len = min(round_up(HEADER + n_streamed, LIST_ALIGN), LIST_ROW)
    width = round_up(HEADER + n_streamed, row_len)
    count = visit.sum(-1, dtype=jnp.int32)  # [B, n_resident]
    resident = jnp.arange(n_resident, dtype=jnp.int32)
    ahead = (count[:, None, :] > count[:, :, None]) | (
        (count[:, None, :] == count[:, :, None]) & (resident[None, :] < resident[:, None]))
    rank = ahead.sum(-1, dtype=jnp.int32)  # [B, n_resident]: the list's row in the result
    streamed = jnp.arange(n_streamed, dtype=jnp.int32)
    place = HEADER + jnp.cumsum(visit, axis=-1, dtype=jnp.int32) - 1
    # blocks not visited go past the end (each to its own place, so every index stays unique) and are dropped
    place = jnp.where(visit, place, width + streamed)
    entries = (streamed << KIND_BITS) + mask_kinds(whole, one_segment)
    values = jnp.concatenate([count[..., None], jnp.broadcast_to(resident, count.shape)[..., None], entries], axis=-1)
    places = jnp.concatenate([jnp.zeros_like(count)[..., None], jnp.ones_like(count)[..., None], place], axis=-1)
    rows = jnp.broadcast_to(rank[..., None], places.shape)
    batches = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None, None], places.shape)
    lists = jnp.zeros((batch, n_resident, width), jnp.int32).at[batches, rows, places].set(
        values, mode="drop", unique_indices=True)
    return lists.reshape(batch, n_resident, width // row_len, row_len)
