"""The grain pipeline: records -> prepared samples -> packed rows -> steps in device order.

::

    MapDataset.source(source)            records (ManifestSource / TextSource)
      .shuffle(seed)                     global shuffle, reshuffled every epoch
      [shard.index::shard.count]         this process's (or SP group's) share
      .repeat(num_epochs)
      .map_with_index(SamplePreparer)    decode + tokenize; bad input -> Skip record
      .to_iter_dataset(ReadOptions)      num_threads readers (or mp_prefetch workers)
    IteratorStage(PackIterator)          first-fit rows, skip counting (natural order)
    IteratorStage(BatchIterator)         B rows + frames -> device order, frame plan, metrics
    [ThreadPrefetchIterDataset]          batches prepared ahead of the step

A step (:func:`build_dataset` yields dicts of NumPy arrays) holds, with
``B = batch_size`` rows of ``S`` tokens (``seq_len``, or the smallest of
``seq_buckets`` that fits the step) and ``F = frames_per_batch``:

* ``input_ids, segment_ids, positions, targets, frame_index, frame_token,
  natural_index``: int32 ``[B, S]``; ``loss_mask``: bool ``[B, S]``; all in
  device order (see ``layout``; ``natural_index`` maps back);
* ``frames``: float32 ``[F, H, W, 3]``; ``frame_valid``: bool ``[F]``;
* ``metrics``: dict of int64 scalars (``skipped/<reason>`` totals so far,
  ``tokens``, ``label_tokens``, ``frames``, ``rows``, ``epoch``).

Resume: ``it.get_state()`` is JSON-able; ``it.set_state(state)`` on a fresh
iterator of the same configuration continues with exactly the batch an
uninterrupted run would have produced next (the packer re-reads the few
records of its open rows; see :class:`PackIterator`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import grain
import numpy as np

from longvila_jax.data import errors, layout, packing, video
from longvila_jax.data.prepare import SamplePreparer
from longvila_jax.data.sharding import Shard, shard_for_process
from longvila_jax.data.sources import TextSource

logger = logging.getLogger("longvila_jax.data")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything that shapes the pipeline's output (static per training configuration).

    Shapes: ``seq_len`` (the row budget ``S``; ``seq_buckets`` optionally adds
    a few shorter lengths), ``batch_size`` rows per process per step,
    ``frames_per_batch`` (None: ``batch_size * max_frames_per_row`` rounded up
    to ``frame_multiple``; 0: just enough, rounded up — changes shape per step).
    Layout: ``ring_size``/``ulysses_size`` of the mesh (rows are put in the
    zigzag order of ``ring_size``), ``frame_multiple`` = devices that encode
    this process's frames. Tokens: ``tokens_per_frame`` placeholder slots per
    frame, ``image_token_id`` (None: the tokenizer's ``<image>``, else -200).
    On a mesh: ``shard=sharding.shard_from_mesh(mesh)`` (processes of one SP
    group read the same share) and ``frame_multiple=frame_multiple_from_mesh(mesh)``;
    ``device.put_batch`` then makes the global arrays.
    Reading: ``shard`` (None: one share per JAX process), ``num_threads``,
    ``worker_count`` (grain worker processes; 0 = threads only),
    ``prefetch_batches``. Bad input: ``strict`` raises on the first.
    """

    seq_len: int = 8192
    seq_buckets: tuple[int, ...] = ()
    batch_size: int = 1
    ring_size: int = 1
    ulysses_size: int = 1
    frames: video.FrameSpec = video.FrameSpec()
    tokens_per_frame: int = 1
    image_token_id: int | None = None
    max_frames_per_row: int | None = None
    frames_per_batch: int | None = None
    frame_multiple: int = 1
    open_rows: int = 4
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    shard: Shard | None = None
    num_threads: int = 4
    prefetch_buffer: int = 16
    worker_count: int = 0
    prefetch_batches: int = 0
    strict: bool = False
    split_long: bool = True

    @property
    def row_len(self) -> int:
        """The packer's budget: the longest row length."""
        return max((self.seq_len, *self.seq_buckets))

    def buckets(self) -> tuple[int, ...]:
        return tuple(sorted({self.seq_len, *self.seq_buckets}))

    def validate(self) -> None:
        for length in self.buckets():
            layout.check_seq_len(length, self.ring_size, self.ulysses_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.frame_multiple < 1:
            raise ValueError(f"frame_multiple must be >= 1, got {self.frame_multiple}")


def frames_per_row(config: DataConfig, newline_tokens: int) -> int:
    """Most frames a row can hold: ``max_frames_per_row`` or ``row_len // (tokens_per_frame + newline)``."""
    if config.max_frames_per_row is not None:
        return config.max_frames_per_row
    return config.row_len // (config.tokens_per_frame + newline_tokens)


def frames_per_batch(config: DataConfig, row_frames: int) -> int:
    if config.frames_per_batch is not None:
        if config.frames_per_batch % config.frame_multiple:
            raise ValueError(f"frames_per_batch {config.frames_per_batch} must be a multiple of frame_multiple "
                             f"{config.frame_multiple} (the devices encoding frames)")
        return config.frames_per_batch
    return layout.round_up(max(config.batch_size * row_frames, 1), config.frame_multiple)


class PackIterator(grain.DatasetIterator):
    """Prepared records -> natural-order rows ``{"row", "frames", "metrics"}``.

    State (JSON): the parent's state *before* the oldest record that still has
    a sample in an open or pending row (the anchor), how many records were
    read since, the row layout (sample keys ``[record seq, part]``), the skip
    counts. ``set_state`` restores the layout and counts and re-reads the
    records since the anchor to refill the open rows' contents (the pipeline's
    map is deterministic), so the rows it emits are exactly those of an
    uninterrupted run. Re-read records are neither counted nor logged again.
    """

    def __init__(self, parent, *, row_len: int, max_frames: int, open_rows: int, image_token_id: int,
                 tokens_per_frame: int, strict: bool):
        super().__init__(parent)
        self._rows = packing.FirstFitRows(row_len, max_frames, open_rows)
        self._row_len, self._image_token_id, self._tpf = row_len, image_token_id, tokens_per_frame
        self._counter = errors.SkipCounter(strict)
        self._payload: dict[tuple, dict] = {}
        self._states: dict[int, dict] = {}  # record seq -> parent state before reading it
        self._pending: collections.deque = collections.deque()
        self._seq = 0
        self._epoch = 0
        self._emitted = 0
        self._exhausted = False
        self._replay: dict | None = None

    # ---- reading
    def _read(self):
        before = self._parent.get_state()
        item = next(self._parent)
        seq = self._seq
        self._seq += 1
        self._states[seq] = before
        return seq, item

    def _take(self, seq: int, item: dict) -> None:
        self._counter.new_epoch(item["epoch"])
        self._epoch = item["epoch"]
        if item["skip"] is not None:
            self._counter.add(item["skip"])
            return
        for part, sample in enumerate(item["samples"]):
            tokens, frames = int(sample["input_ids"].size), int(sample["num_frames"])
            if not self._rows.fits(tokens, frames):
                self._counter.add(errors.Skip(item["where"], errors.TOO_LONG,
                                              f"{tokens} tokens / {frames} frames exceed a row "
                                              f"({self._row_len} tokens / {self._rows.max_frames} frames)",
                                              item["epoch"]))
                continue
            self._payload[(seq, part)] = sample
            self._pending.extend(self._rows.place([seq, part], tokens, frames))

    def _refill(self) -> None:
        """After ``set_state``: re-read the records of the open rows (no counting, no logging)."""
        replay, self._replay = self._replay, None
        wanted = {tuple(k) for k in self._rows.keys()} | {tuple(k) for keys in self._pending for k in keys}
        for _ in range(replay["count"]):
            seq, item = self._read()
            for part, sample in enumerate(item["samples"]):
                if (seq, part) in wanted:
                    self._payload[(seq, part)] = sample
            if any(k[0] == seq for k in wanted) and item["skip"] is not None:
                raise RuntimeError(f"{item['where']} read fine before the checkpoint but now fails "
                                   f"({item['skip'].reason}: {item['skip'].message}); the data changed under "
                                   f"the run, so it cannot resume exactly")
        missing = wanted - set(self._payload)
        if missing:
            raise RuntimeError(f"resume could not re-read samples {sorted(missing)[:4]}: the data or the "
                               f"pipeline configuration changed since the checkpoint")

    def __next__(self):
        if self._replay is not None:
            self._refill()
        while not self._pending:
            if self._exhausted:
                raise StopIteration
            try:
                seq, item = self._read()
            except StopIteration:
                self._exhausted = True
                self._pending.extend(self._rows.flush())
                self._counter.finish()
                continue
            self._take(seq, item)
        keys = [tuple(k) for k in self._pending.popleft()]
        samples = [self._payload.pop(k) for k in keys]
        self._prune()
        self._emitted += 1
        row = packing.pack_row(samples, self._row_len, image_token_id=self._image_token_id,
                               tokens_per_frame=self._tpf)
        frames = [s["frames"] for s in samples if s["frames"] is not None]
        metrics = {**self._counter.metrics(), "epoch": self._epoch, "rows_emitted": self._emitted}
        return {"row": row, "frames": frames, "metrics": metrics}

    def _live(self) -> list[int]:
        return [k[0] for k in self._rows.keys()] + [k[0] for keys in self._pending for k in keys]

    def _prune(self) -> None:
        live = self._live()
        anchor = min(live) if live else self._seq
        for seq in [s for s in self._states if s < anchor]:
            del self._states[seq]

    # ---- checkpointing
    def get_state(self) -> dict:
        if self._replay is not None:  # restored but not advanced: the restored state itself
            return self._replay["state"]
        live = self._live()
        anchor = min(live) if live else self._seq
        parent = self._states[anchor] if live else self._parent.get_state()
        return {
            "parent": parent,
            "count": self._seq - anchor,
            "rows": self._rows.state(),
            "pending": [[list(k) for k in keys] for keys in self._pending],
            "counter": self._counter.state(),
            "epoch": self._epoch,
            "emitted": self._emitted,
            "exhausted": self._exhausted,
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._seq, self._states, self._payload = 0, {}, {}
        self._rows.load(state["rows"])
        # keys are relative to the anchor in the restored numbering: shift them to start at 0
        shift = min([k[0] for r in state["rows"] for k in r["keys"]] +
                    [k[0] for keys in state["pending"] for k in keys], default=0)
        for r in self._rows.rows:
            r["keys"] = [[k[0] - shift, k[1]] for k in r["keys"]]
        self._pending = collections.deque([[[k[0] - shift, k[1]] for k in keys] for keys in state["pending"]])
        self._counter.load(state["counter"])
        self._epoch, self._emitted = int(state["epoch"]), int(state["emitted"])
        self._exhausted = bool(state["exhausted"]) and not state["count"]
        self._replay = {"count": int(state["count"]), "state": state}

    def metrics(self) -> dict[str, int]:
        """Skip counts so far (``skipped/<reason>``, ``skipped/all``)."""
        return self._counter.metrics()


class IteratorStage(grain.IterDataset):
    """A grain stage whose iterator is ``iterator_cls(parent iterator, **kwargs)`` (:class:`PackIterator`,
    :class:`BatchIterator`)."""

    def __init__(self, parent: grain.IterDataset, iterator_cls, **kwargs):
        super().__init__(parent)
        self._iterator_cls, self._kwargs = iterator_cls, kwargs

    def __iter__(self):
        return self._iterator_cls(self._parent.__iter__(), **self._kwargs)


class BatchIterator(grain.DatasetIterator):
    """``batch_size`` rows -> one step in device order (see the module doc). Holds no rows between
    calls, so its state is its parent's. The last step of finite data is filled with empty rows."""

    def __init__(self, parent, *, batch_size: int, buckets: tuple[int, ...], ring_size: int, frames_per_batch: int,
                 frame_shape: tuple[int, int], frame_multiple: int):
        super().__init__(parent)
        self._batch_size, self._buckets, self._ring = batch_size, buckets, ring_size
        self._frames_per_batch, self._frame_shape, self._frame_multiple = frames_per_batch, frame_shape, frame_multiple

    def __next__(self):
        items = []
        for _ in range(self._batch_size):
            try:
                items.append(next(self._parent))
            except StopIteration:
                break
        if not items:
            raise StopIteration
        used = max(int(np.max(np.flatnonzero(it["row"]["segment_ids"]), initial=-1)) + 1 for it in items)
        length = next(b for b in self._buckets if b >= used)
        rows = [{k: v[:length] for k, v in it["row"].items()} for it in items]
        frames = [it["frames"] for it in items]
        while len(rows) < self._batch_size:  # end of data: empty rows (segment 0, no loss)
            rows.append({k: (np.full(length, -1, np.int32) if k.startswith("frame_") else np.zeros_like(v))
                         for k, v in rows[0].items()})
            frames.append([])
        batch = layout.make_batch(rows, frames, ring_size=self._ring, frames_per_batch=self._frames_per_batch,
                                  frame_shape=self._frame_shape, frame_multiple=self._frame_multiple)
        metrics = dict(items[-1]["metrics"])
        metrics.update(tokens=int((batch["segment_ids"] > 0).sum()), label_tokens=int(batch["loss_mask"].sum()),
                       frames=int(batch["frame_valid"].sum()), rows=len(items))
        batch["metrics"] = {k: np.int64(v) for k, v in metrics.items()}
        return batch

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class _PrepareWithEpoch:
    """``(index, record) -> preparer(record, epoch=index // per_epoch)`` (picklable for worker processes)."""

    def __init__(self, preparer: SamplePreparer, per_epoch: int):
        self.preparer, self.per_epoch = preparer, per_epoch

    def __call__(self, index: int, record: dict) -> dict:
        return self.preparer(record, epoch=index // self.per_epoch)


def build_dataset(source, tokenizer, config: DataConfig) -> grain.IterDataset:
    """The pipeline of the module doc over ``source`` (``ManifestSource`` or ``TextSource``).

    ``iter(dataset)`` gives a grain ``DatasetIterator`` of steps with
    ``get_state()``/``set_state()`` (and Orbax ``save``/``load``).
    """
    config.validate()
    documents = isinstance(source, TextSource)
    if len(source) == 0:
        raise ValueError(f"{source!r} holds no sample")
    shard = config.shard or shard_for_process()
    newline = 0 if documents else len(tokenizer.encode("\n", add_special_tokens=False))
    row_frames = 0 if documents else frames_per_row(config, newline)
    preparer = SamplePreparer(tokenizer, config.frames, seq_len=config.row_len, max_frames_per_row=row_frames,
                              image_token_id=config.image_token_id, tokens_per_frame=config.tokens_per_frame,
                              documents=documents, split_long=config.split_long)
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds[shard.index::shard.count]
    per_epoch = len(ds)
    if per_epoch == 0:
        raise ValueError(f"shard {shard.index} of {shard.count} of {len(source)} records is empty; "
                         f"use fewer shards or more data")
    ds = ds.repeat(config.num_epochs)
    ds = ds.map_with_index(_PrepareWithEpoch(preparer, per_epoch))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads,
                                              prefetch_buffer_size=config.prefetch_buffer))
    if config.worker_count:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads absl flags in its workers; outside absl.app.run: defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    it = IteratorStage(it, PackIterator, row_len=config.row_len, max_frames=max(row_frames, 0),
                       open_rows=config.open_rows, image_token_id=preparer.image_token_id,
                       tokens_per_frame=config.tokens_per_frame, strict=config.strict)
    step_frames = frames_per_batch(config, row_frames) if row_frames else config.frame_multiple
    height, width = config.frames.hw
    if step_frames * height * width * 12 > 2 ** 31:
        logger.warning("each step carries %d frames of %dx%d float32 (%.1f GiB): set max_frames_per_row (or "
                       "frames_per_batch) to what a row really holds", step_frames, height, width,
                       step_frames * height * width * 12 / 2 ** 30)
    it = IteratorStage(it, BatchIterator, batch_size=config.batch_size, buckets=config.buckets(),
                       ring_size=config.ring_size, frames_per_batch=step_frames, frame_shape=config.frames.hw,
                       frame_multiple=config.frame_multiple)
    if config.prefetch_batches:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.prefetch_batches)
    return it
