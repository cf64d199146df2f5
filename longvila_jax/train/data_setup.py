"""The training data of a run: the grain pipeline of ``longvila_jax.data``, as global arrays per step.

:class:`StepSource` builds the pipeline for the config's data kind (needle
videos, a video/image manifest, text documents), pulls ``grad_accum`` steps
of it per optimizer step and stacks them ``[A, ...]``, and turns the
process-local NumPy arrays into global ``jax.Array``s on the mesh:

* rows: this process reads shard ``i`` of ``n`` (``data.shard_from_mesh``:
  processes of one sequence-parallel group read the same rows); its
  ``batch_size / n`` rows are rows ``[i*b, (i+1)*b)`` of the global batch;
* frames: the process's ``F`` frames are global frames ``[p*F, (p+1)*F)``
  (``p`` = process index; the frames axis runs over devices in process
  order) and its ``frame_index`` plan is offset by ``p*F`` to match.

Progressive lengths (``data.seq_schedule``): each phase has its own pipeline
(built fresh, seeded by the phase) and row length; the state saved with a
checkpoint is ``{"phase", "iterator"}``.  :meth:`get_state` returns it as
bytes so that grain's Orbax handler stores it, one file per process.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from longvila_jax.processes import barrier
from longvila_jax.train.config import DataSection

TOKEN_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token")


def build_tokenizer(spec: str):
    """``toy:llama3`` / ``toy:chatml`` (the local toy tokenizer) or a folder with a HF tokenizer."""
    if spec.startswith("toy:"):
        from longvila_jax.data.toy_tokenizer import build_toy_tokenizer

        return build_toy_tokenizer(spec.split(":", 1)[1])
    from transformers import AutoTokenizer

    if not Path(spec).exists():
        raise FileNotFoundError(f"data.tokenizer={spec!r} is neither toy:llama3/toy:chatml nor a folder; point it "
                                f"at the checkpoint's LLM folder (the one with tokenizer.json)")
    return AutoTokenizer.from_pretrained(spec)


def phase_of(step: int, schedule) -> tuple[int, int | None]:
    """``(phase index, seq_len)`` for ``step`` under ``[[from_step, seq_len], ...]`` (empty: (0, None))."""
    if not schedule:
        return 0, None
    phase, length = 0, None
    for i, (start, seq_len) in enumerate(sorted(schedule)):
        if step >= start:
            phase, length = i, int(seq_len)
    if length is None:
        raise ValueError(f"data.seq_schedule {schedule} does not cover step {step}; start it at step 0")
    return phase, length


def attention_pairs(segment_ids: np.ndarray) -> int:
    """``sum over samples of L^2`` of a step's rows (for the attention FLOPs); order-independent."""
    total = 0
    for row in np.asarray(segment_ids).reshape(-1, segment_ids.shape[-1]):
        counts = np.bincount(row[row > 0])
        total += int(np.sum(counts.astype(np.int64) ** 2))
    return total


class StepSource:
    """Steps of global arrays for the trainer (see module doc).

    Args:
      section: the config's data section; model_config: the ``LongVILAConfig`` (image size, tokens per
      frame, placeholder id, vocabulary); mesh: the training mesh; grad_accum: micro-batches per step;
      workdir: where synthetic data is written when ``section.root`` is not set.
    """

    def __init__(self, section: DataSection, model_config, mesh, *, grad_accum: int = 1, workdir="runs/train"):
        from longvila_jax.data.sharding import shard_from_mesh

        self.section, self.model_config, self.mesh = section, model_config, mesh
        self.grad_accum = grad_accum
        self.workdir = Path(workdir)
        self.tokenizer = build_tokenizer(section.tokenizer)
        if len(self.tokenizer) > model_config.llm.vocab_size:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the LLM's vocabulary is "
                             f"{model_config.llm.vocab_size}; use the checkpoint's own tokenizer")
        self.shard = shard_from_mesh(mesh)
        if section.batch_size % self.shard.count:
            raise ValueError(f"data.batch_size={section.batch_size} rows must divide among {self.shard.count} "
                             f"data shards (the mesh's data x fsdp groups across processes)")
        self.local_rows = section.batch_size // self.shard.count
        self.source = self._source()
        self.phase, self.iterator = None, None

    # ---- building
    def _source(self):
        from longvila_jax.data import synthetic
        from longvila_jax.data.sources import ManifestSource, TextSource

        s = self.section
        if s.kind == "needle":
            root = Path(s.root) if s.root else self.workdir / "data" / "needle"
            manifest = root / "manifest.jsonl"
            if jax.process_index() == 0 and not manifest.exists():
                synthetic.make_needle_dataset(root, s.num_videos, seed=s.seed, num_frames=s.num_frames,
                                              kinds=tuple(s.needle_kinds), progress=False)
            barrier("needle data")  # every process waits for process 0's files
            return ManifestSource(manifest)
        if s.kind == "manifest":
            if not s.manifest:
                raise ValueError("data.kind='manifest' needs data.manifest (a JSONL file of samples)")
            return ManifestSource(s.manifest, data_root=s.root)
        if s.kind == "text":
            if not s.documents:
                raise ValueError("data.kind='text' needs data.documents (JSONL/.txt folder of documents)")
            return TextSource(s.documents)
        if s.kind == "synthetic_text":
            rng = np.random.default_rng(s.seed)
            docs = synthetic.make_text_documents(s.num_documents, rng, min_words=s.doc_words[0],
                                                 max_words=s.doc_words[1])
            return TextSource([d["text"] for d in docs])
        raise ValueError(f"data.kind={s.kind!r} is unknown; use needle, manifest, text or synthetic_text")

    @property
    def text_only(self) -> bool:
        return self.section.kind in ("text", "synthetic_text")

    def data_config(self, seq_len: int, phase: int):
        from longvila_jax.data.pipeline import DataConfig
        from longvila_jax.data.video import FrameSpec

        s, cfg = self.section, self.model_config
        ring, ulysses = self.mesh.shape.get("ring", 1), self.mesh.shape.get("ulysses", 1)
        return DataConfig(
            seq_len=seq_len, batch_size=self.local_rows, ring_size=ring, ulysses_size=ulysses,
            frames=FrameSpec(num_frames=s.num_frames, image_size=cfg.vision.image_size),
            tokens_per_frame=cfg.tokens_per_frame, image_token_id=cfg.image_token_id,
            max_frames_per_row=s.max_frames_per_row, frames_per_batch=s.frames_per_batch,
            frame_multiple=jax.local_device_count(), seed=s.seed + 1000 * phase, shard=self.shard,
            num_threads=s.num_threads, prefetch_batches=s.prefetch_batches)

    def _open(self, phase: int, seq_len: int):
        from longvila_jax.data.pipeline import build_dataset

        self.phase = phase
        self.iterator = iter(build_dataset(self.source, self.tokenizer, self.data_config(seq_len, phase)))

    def seq_len_at(self, step: int) -> int:
        return phase_of(step, self.section.seq_schedule)[1] or self.section.seq_len

    # ---- stepping
    def next_step(self, step: int) -> tuple[dict, dict]:
        """``(global arrays [A, ...], host info)`` for optimizer step ``step`` (0-based)."""
        phase, _ = phase_of(step, self.section.seq_schedule)
        if self.iterator is None or phase != self.phase:
            self._open(phase, self.seq_len_at(step))
        micro = [next(self.iterator) for _ in range(self.grad_accum)]
        info = {k: int(v) for k, v in micro[-1]["metrics"].items() if k.startswith("skipped/")}
        info["tokens"] = sum(int(m["metrics"]["tokens"]) for m in micro)
        info["label_tokens"] = sum(int(m["metrics"]["label_tokens"]) for m in micro)
        info["frames"] = sum(int(m["metrics"]["frames"]) for m in micro)
        info["attention_pairs"] = sum(attention_pairs(m["segment_ids"]) for m in micro)
        keys = TOKEN_KEYS + (() if self.text_only else ("frames",))
        stacked = {k: np.stack([m[k] for m in micro]) for k in keys}
        return self.to_global(stacked), _scale_to_global(info, self.shard.count)

    def to_global(self, local: dict) -> dict:
        """Process-local ``[A, b, S]`` rows and ``[A, F, H, W, 3]`` frames -> global arrays on the mesh."""
        return to_global(local, self.mesh, shard_index=self.shard.index, shard_count=self.shard.count)

    # ---- checkpointing (grain's Orbax handler: bytes in, bytes out)
    def get_state(self) -> bytes:
        state = None if self.iterator is None else self.iterator.get_state()
        return json.dumps({"phase": self.phase, "iterator": state}).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state)
        self.phase, self.iterator = None, None
        if saved["iterator"] is None:
            return
        phase = int(saved["phase"])
        start = sorted(self.section.seq_schedule)[phase][0] if self.section.seq_schedule else 0
        self._open(phase, self.seq_len_at(start))
        self.iterator.set_state(saved["iterator"])

    def start_prefetch(self) -> None:
        """Grain's handler calls this after a restore; the pipeline starts on the next ``next_step``."""


def to_global(local: dict, mesh, *, shard_index: int = 0, shard_count: int = 1) -> dict:
    """Process-local step arrays (leading micro-batch axis) -> global ``jax.Array``s (see module doc).

    Rows: this process holds rows ``[shard_index * b, (shard_index + 1) * b)`` of
    ``shard_count * b``.  Frames: it holds global frames ``[p * F, (p + 1) * F)``
    (``p`` = ``jax.process_index()``); its ``frame_index`` is offset to match.
    """
    local = dict(local)
    rows = next(v.shape[1] for k, v in local.items() if k != "frames")
    frames_offset = 0
    if "frames" in local:
        frames_offset = jax.process_index() * local["frames"].shape[1]
        index = local["frame_index"]
        local["frame_index"] = np.where(index >= 0, index + frames_offset, -1).astype(np.int32)
    shapes = {}
    for key, value in local.items():
        scale = jax.process_count() if key == "frames" else shard_count
        shapes[key] = (value.shape[0], value.shape[1] * scale, *value.shape[2:])
    shardings = _shardings(shapes, mesh)
    return {key: _global_array(value, shapes[key], shardings[key],
                               frames_offset if key == "frames" else shard_index * rows)
            for key, value in local.items()}


def _shardings(shapes: dict, mesh) -> dict:
    from longvila_jax.train.shardings import frame_sharding, token_sharding

    return {k: frame_sharding(mesh, s, leading=1) if k == "frames" else token_sharding(mesh, s, leading=1)
            for k, s in shapes.items()}


def _global_array(local: np.ndarray, shape, sharding, offset: int) -> jax.Array:
    """A global array whose axis 1 holds ``local`` at ``[offset, offset + local.shape[1])`` on this process."""
    if jax.process_count() == 1 and local.shape == tuple(shape):
        return jax.device_put(local, sharding)

    def piece(index):
        rows = index[1]
        start = (rows.start or 0) - offset
        stop = (rows.stop if rows.stop is not None else shape[1]) - offset
        if start < 0 or stop > local.shape[1]:
            raise RuntimeError(f"device slice {index} of a {shape} array is not on this process (rows "
                               f"[{offset}, {offset + local.shape[1]})); the mesh's device order must follow "
                               f"the process order")
        return local[(index[0], slice(start, stop), *index[2:])]

    return jax.make_array_from_callback(tuple(shape), sharding, piece)


def _scale_to_global(info: dict, shards: int) -> dict:
    """Host counts of this process's share -> estimates for the whole step (equal shares)."""
    out = dict(info)
    for key in ("tokens", "label_tokens", "frames", "attention_pairs"):
        out[key] = info[key] * shards
    return out
