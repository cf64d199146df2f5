"""Packing samples into rows of a fixed token budget, on the natural order.

:func:`pack_row` lays samples ``1..k`` one after another into a row of ``S``
tokens and computes, per token ``i`` (natural order):

* ``input_ids`` int32: the token, 0 on padding;
* ``segment_ids`` int32: ``j`` on the tokens of sample ``j`` (1-based), 0 on padding;
* ``positions`` int32: ``i - start(sample)``, restarting at 0 per sample, 0 on padding;
* ``targets`` int32: ``input_ids[i + 1]`` when token ``i + 1`` belongs to the
  same sample, else 0 (the last token of a sample, padding); also 0 where
  the next token is a visual placeholder (it has no id to predict);
* ``loss_mask`` bool: ``label_mask[i + 1]`` of the same sample, i.e. the
  next token is a label (assistant) token, and never where it is a placeholder;
* ``frame_index`` int32: for a placeholder slot, the frame that feeds it
  (numbered from ``frame_offset`` in row reading order), else -1;
* ``frame_token`` int32: which of the frame's ``tokens_per_frame`` visual
  tokens fills the slot, else -1.

Nothing is shifted after this point: the device order permutes whole tokens,
so no target is lost at a shard seam.

:class:`FirstFitRows` decides which sample goes into which row: first fit
over at most ``open_rows`` rows being filled; when a sample fits none and all
are open, the oldest row is emitted. A row is also emitted as soon as it is
full. Its state is a small JSON-able dict (keys of the samples per row),
which is what makes the pipeline's resume exact.
"""

from __future__ import annotations

import numpy as np

ROW_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token")


def pack_row(samples, seq_len: int, *, image_token_id: int, tokens_per_frame: int = 1,
             frame_offset: int = 0, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Natural-order arrays ``[seq_len]`` (see module doc) of ``samples``, each a dict with
    ``input_ids`` int ``[L]`` and ``label_mask`` bool ``[L]``; raises ``ValueError`` if they overflow."""
    total = sum(len(s["input_ids"]) for s in samples)
    if total > seq_len:
        raise ValueError(f"{len(samples)} samples of {total} tokens do not fit a row of {seq_len}")
    row = {
        "input_ids": np.full(seq_len, pad_id, np.int32),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
        "targets": np.zeros(seq_len, np.int32),
        "loss_mask": np.zeros(seq_len, bool),
        "frame_index": np.full(seq_len, -1, np.int32),
        "frame_token": np.full(seq_len, -1, np.int32),
    }
    start, frames = 0, frame_offset
    for segment, sample in enumerate(samples, start=1):
        ids = np.asarray(sample["input_ids"], np.int32)
        labels = np.asarray(sample["label_mask"], bool)
        end = start + ids.size
        row["input_ids"][start:end] = ids
        row["segment_ids"][start:end] = segment
        row["positions"][start:end] = np.arange(ids.size, dtype=np.int32)
        following = ids[1:]
        row["targets"][start:end - 1] = np.where(following == image_token_id, 0, following)
        row["loss_mask"][start:end - 1] = labels[1:] & (following != image_token_id)
        slots = np.flatnonzero(ids == image_token_id)
        if slots.size % tokens_per_frame:
            raise ValueError(f"a sample holds {slots.size} placeholder slots, not a multiple of "
                             f"tokens_per_frame={tokens_per_frame}")
        row["frame_index"][start + slots] = frames + np.arange(slots.size, dtype=np.int32) // tokens_per_frame
        row["frame_token"][start + slots] = np.arange(slots.size, dtype=np.int32) % tokens_per_frame
        frames += slots.size // tokens_per_frame
        start = end
    return row


class FirstFitRows:
    """First-fit assignment of samples (by key) to at most ``open_rows`` rows of ``seq_len`` tokens
    and ``max_frames`` frames. Keys are any JSON-able values (the pipeline uses ``[record, part]``)."""

    def __init__(self, seq_len: int, max_frames: int, open_rows: int = 4):
        if open_rows < 1:
            raise ValueError(f"open_rows must be >= 1, got {open_rows}")
        self.seq_len, self.max_frames, self.open_rows = seq_len, max_frames, open_rows
        self.rows: list[dict] = []  # {"keys": [...], "tokens": int, "frames": int}

    def fits(self, tokens: int, frames: int) -> bool:
        """Whether a sample fits an empty row at all."""
        return tokens <= self.seq_len and frames <= self.max_frames

    def place(self, key, tokens: int, frames: int) -> list[list]:
        """Places one sample; returns the key lists of the rows this closes (0, 1 or 2 rows, oldest first)."""
        if not self.fits(tokens, frames):
            raise ValueError(f"a sample of {tokens} tokens / {frames} frames exceeds a row "
                             f"({self.seq_len} tokens / {self.max_frames} frames)")
        emitted = []
        target = next((r for r in self.rows if r["tokens"] + tokens <= self.seq_len
                       and r["frames"] + frames <= self.max_frames), None)
        if target is None:
            if len(self.rows) == self.open_rows:
                emitted.append(self.rows.pop(0)["keys"])
            target = {"keys": [], "tokens": 0, "frames": 0}
            self.rows.append(target)
        target["keys"].append(key)
        target["tokens"] += tokens
        target["frames"] += frames
        if target["tokens"] == self.seq_len or (self.max_frames and target["frames"] == self.max_frames):
            self.rows.remove(target)
            emitted.append(target["keys"])
        return emitted

    def flush(self) -> list[list]:
        """Closes every open row (end of data), oldest first."""
        rows, self.rows = [r["keys"] for r in self.rows], []
        return rows

    def keys(self) -> list:
        return [k for r in self.rows for k in r["keys"]]

    def state(self) -> list[dict]:
        return [{"keys": list(r["keys"]), "tokens": r["tokens"], "frames": r["frames"]} for r in self.rows]

    def load(self, state: list[dict]) -> None:
        self.rows = [{"keys": [list(k) if isinstance(k, (list, tuple)) else k for k in r["keys"]],
                      "tokens": int(r["tokens"]), "frames": int(r["frames"])} for r in state]
