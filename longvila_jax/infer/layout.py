"""Host-side layout of a batch of prompts for prefill (NumPy).

A prompt row holds text ids with ``n`` image placeholders (one per frame, the
same ``n`` in every row); splicing turns each placeholder into the ``T``
visual tokens of its frame, so a row of ``len`` ids becomes
``len - n + n*T`` tokens.  The batch is padded to one bucketed length ``S``
(padding: segment 0), every row's real tokens get segment 1 and positions
``0 .. L-1``, and the sequence is permuted into the load-balanced device
order of ``sp.balanced_order`` for the mesh's ring size (with no ring the
natural order stays, and the plain causal kernel can serve).

``S`` is a multiple of ``quantum = lcm(2 * ring * ulysses, bucket)``: the
zigzag order needs ``2 * ring`` chunks, ``sp.attention`` ``ring * ulysses``
shards, and bucketing keeps the number of compiled shapes small.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from longvila_jax.sp.order import balanced_order

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """One prefill batch.

    ``input_ids`` int32 ``[B, S_text]`` natural order, text padded with
    ``PAD_ID`` so that splicing gives exactly ``S`` tokens; ``order`` and
    ``inverse`` int32 ``[B, S]`` (``device = natural[order]``); ``positions``
    and ``segment_ids`` int32 ``[B, S]`` in device order; ``lengths`` int32
    ``[B]`` spliced tokens per row; ``frames_per_row`` ``n``.
    """

    input_ids: np.ndarray
    order: np.ndarray
    inverse: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    lengths: np.ndarray
    frames_per_row: int

    @property
    def length(self) -> int:
        """Spliced, padded sequence length ``S``."""
        return self.order.shape[1]

    @property
    def is_prefix(self) -> bool:
        """The device order is the natural one: each row's real tokens first, padding after."""
        return bool(np.array_equal(self.order, np.broadcast_to(np.arange(self.length), self.order.shape)))

    def device_index(self, natural_index: np.ndarray) -> np.ndarray:
        """Natural token indices ``[B, K]`` -> their device-order indices ``[B, K]``."""
        return np.take_along_axis(self.inverse, np.asarray(natural_index, np.int64), axis=1).astype(np.int32)

    def last_index(self) -> np.ndarray:
        """Device-order index ``[B, 1]`` of each row's last prompt token (its logits give the first new token)."""
        return self.device_index((self.lengths - 1)[:, None])


def quantum(ring: int, ulysses: int, bucket: int) -> int:
    """The multiple every padded length ``S`` is rounded to."""
    return math.lcm(2 * ring * ulysses, max(1, bucket))


def layout_prompts(rows: list[np.ndarray], *, image_token_id: int, tokens_per_frame: int, ring: int = 1,
                   ulysses: int = 1, bucket: int = 128, min_length: int = 0) -> PromptLayout:
    """Pads, masks and orders a batch of prompt rows (1-D int arrays with placeholders).

    ``min_length``: pad to at least this many spliced tokens (to share one
    compiled shape across calls).  Raises ``ValueError`` when rows hold
    different numbers of placeholders or a row is empty.
    """
    rows = [np.asarray(r, np.int64).reshape(-1) for r in rows]
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("every prompt row needs at least one token")
    counts = [int(np.sum(r == image_token_id)) for r in rows]
    if len(set(counts)) != 1:
        raise ValueError(f"prompt rows hold {counts} image placeholders; every row of a batch must hold the same "
                         f"number of frames (batch prompts with equal frame counts, or run them separately)")
    n = counts[0]
    extra = n * (tokens_per_frame - 1)
    lengths = np.array([r.size + extra for r in rows], np.int32)
    step = quantum(ring, ulysses, bucket)
    length = max(int(lengths.max()), min_length)
    length = -(-length // step) * step
    ids = np.full((len(rows), length - extra), PAD_ID, np.int32)
    for b, r in enumerate(rows):
        ids[b, :r.size] = r
    natural = np.arange(length, dtype=np.int32)[None, :]
    segment_ids = (natural < lengths[:, None]).astype(np.int32)
    positions = np.where(segment_ids > 0, natural, 0).astype(np.int32)
    if ring == 1:  # nothing to balance (Ulysses computes whole sequences per head): natural order
        order = inverse = np.broadcast_to(natural, segment_ids.shape)
    else:
        order, inverse = balanced_order(segment_ids, ring)
    take = lambda a: np.take_along_axis(a, order, axis=1).astype(np.int32)  # noqa: E731
    return PromptLayout(ids, order.astype(np.int32), inverse.astype(np.int32), take(positions), take(segment_ids),
                        lengths, n)
