"""The V-NIAH haystack: frames at 1 fps from the start of a video, or generated ones.

Output: uint8 RGB ``[n, S, S, 3]`` at the tower's resolution ``S``; haystack
length ``L`` uses the first ``L`` frames.
"""

from __future__ import annotations

import numpy as np

from longvila_jax.infer.errors import InputError


def generated_haystack(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``frames`` distractor frames: coarse grey-ish blocks drifting slowly (no digit, colour or shape)."""
    rng = np.random.default_rng(seed)
    cells = max(1, size // 8)
    base = rng.uniform(70, 180, size=(cells, cells, 1))
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        base = np.clip(base + rng.normal(0, 6, size=base.shape), 60, 190)
        tint = rng.uniform(-10, 10, size=(1, 1, 3))
        frame = np.clip(base + tint, 0, 255).astype(np.uint8)
        frame = np.repeat(np.repeat(frame, -(-size // cells), axis=0), -(-size // cells), axis=1)
        out[i] = frame[:size, :size]
    return out


def video_haystack(path, frames: int, size: int, fps: float = 1.0) -> np.ndarray:
    """The first ``frames`` frames of a video sampled at ``fps`` (1 frame per second by default)."""
    from longvila_jax.data.video import FrameSpec, MediaError, decode_frames
    from longvila_jax.infer.media import frames_at_fps, probe_video

    info = probe_video(path)
    available = frames_at_fps(info, fps)
    if available < frames:
        raise InputError(f"haystack {path}: {info.seconds:.0f} s at {fps:g} fps gives {available} frames, fewer than "
                         f"the longest haystack asked for ({frames}); give a longer video or shorter --lengths")
    try:
        decoded = decode_frames(str(path), FrameSpec(num_frames=available, fps=fps, image_size=size))
    except MediaError as err:
        raise InputError(f"haystack {path}: {err.reason}: {err.message}") from None
    return decoded[:frames]
