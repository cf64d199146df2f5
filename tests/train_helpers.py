"""Shared pieces of the training tests: random packed video steps built with the data layer's packer."""

from __future__ import annotations

import numpy as np

from longvila_jax.data.layout import make_batch
from longvila_jax.data.packing import pack_row

STEP_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask", "frame_index", "frame_token", "frames")


def tiny_config():
    from longvila_jax.demo import load_preset

    return load_preset("tiny")


def random_sample(config, rng, *, frames: int, text: int):
    """A sample with ``frames`` frames (T placeholder slots + a newline each) inside ``text`` random tokens,
    the last third of the text as labels; returns ``(sample, frames [n, H, W, 3])``."""
    vocab, tpf, image = config.llm.vocab_size, config.tokens_per_frame, config.image_token_id
    words = rng.integers(1, vocab, text).tolist()
    cut = int(rng.integers(1, max(2, text // 3)))
    ids = words[:cut] + ([image] * tpf + [13]) * frames + words[cut:]
    labels = np.zeros(len(ids), bool)
    labels[-max(2, text // 3):] = True
    size = config.vision.image_size
    pixels = rng.standard_normal((frames, size, size, 3)).astype(np.float32)
    return {"input_ids": np.asarray(ids, np.int32), "label_mask": labels}, pixels


def random_rows(config, rng, *, rows: int, seq_len: int, frames_per_batch: int, samples_per_row=(1, 3),
                max_frames: int = 3):
    """``(packed natural-order rows, frames per row)``: rows of random samples with padding."""
    packed, row_frames = [], []
    budget_frames = frames_per_batch // rows
    for _ in range(rows):
        samples, frames, used, used_frames = [], [], 0, 0
        for _ in range(int(rng.integers(samples_per_row[0], samples_per_row[1] + 1))):
            n = int(rng.integers(0, max_frames + 1))
            text = int(rng.integers(6, 30))
            need = text + n * (config.tokens_per_frame + 1)
            if used + need > seq_len - 4 or used_frames + n > budget_frames:
                break
            sample, pixels = random_sample(config, rng, frames=n, text=text)
            samples.append(sample)
            frames.append(pixels)
            used += need
            used_frames += n
        packed.append(pack_row(samples, seq_len, image_token_id=config.image_token_id,
                               tokens_per_frame=config.tokens_per_frame))
        row_frames.append(frames)
    return packed, row_frames


def to_step(config, packed, row_frames, *, ring_size: int, frames_per_batch: int, frame_multiple: int = 8) -> dict:
    """The step of natural-order rows: device order, frames, frame plan (``STEP_KEYS``)."""
    size = config.vision.image_size
    batch = make_batch(packed, row_frames, ring_size=ring_size, frames_per_batch=frames_per_batch,
                       frame_shape=(size, size), frame_multiple=frame_multiple)
    return {k: batch[k] for k in STEP_KEYS}


def random_step(config, rng, *, rows: int, seq_len: int, ring_size: int, frames_per_batch: int,
                frame_multiple: int = 8, **kwargs) -> dict:
    """A step ``{key: array}`` in device order: ``rows`` rows of packed random samples with padding."""
    packed, row_frames = random_rows(config, rng, rows=rows, seq_len=seq_len, frames_per_batch=frames_per_batch,
                                     **kwargs)
    return to_step(config, packed, row_frames, ring_size=ring_size, frames_per_batch=frames_per_batch,
                   frame_multiple=frame_multiple)


def stack(*steps) -> dict:
    """Micro-batches ``[A, ...]`` of steps with equal shapes."""
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}
