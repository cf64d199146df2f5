"""A user's video for inference: probe it, choose how many frames fit the token budget, decode them.

Frame choice: with ``frames=N`` the video gives N frames spread uniformly
over its length; otherwise one frame per ``1/fps`` seconds (default 1 fps).
Either way the prompt must fit the budget (``budget.FrameBudget``); when it
does not, the error says how many frames fit and how to ask for them.
Decoding is ``data.video.load_video`` (PyAV): float32 ``[n, H, W, 3]``,
normalized for SigLIP.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from longvila_jax.infer.budget import FrameBudget
from longvila_jax.infer.errors import InputError


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Frame count, frame rate and duration (seconds) from the container header."""

    path: str
    total: int
    fps: float

    @property
    def seconds(self) -> float:
        return self.total / self.fps


def probe_video(path) -> VideoInfo:
    """Reads the header of a video file; raises :class:`InputError` when it is missing or unreadable."""
    import av

    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"video {path}: no such file; give the path of a video file (mp4, mkv, webm, ...)")
    if os.path.isdir(path):
        raise InputError(f"video {path}: is a folder; give the path of one video file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"video {path}: the file has no video stream; give a video file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise InputError(f"video {path}: the video stream states no frame rate; re-encode the file")
            total = int(stream.frames or 0)
            if total <= 0:
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration:
                    seconds = container.duration / 1_000_000
                else:
                    raise InputError(f"video {path}: the header gives neither a frame count nor a duration; "
                                     f"re-encode the file")
                total = int(round(seconds * float(rate)))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"video {path}: cannot be read as a video ({err}); check the file or re-encode it") from None
    if total < 1:
        raise InputError(f"video {path}: holds no frame")
    return VideoInfo(path, total, float(rate))


def frames_at_fps(info: VideoInfo, fps: float) -> int:
    """Frames one per ``1/fps`` seconds gives (at least 1, at most every frame)."""
    return max(1, min(info.total, math.floor(info.seconds * fps + 1e-9)))


def choose_frame_count(info: VideoInfo, budget: FrameBudget, *, frames: int | None = None,
                       fps: float = 1.0) -> int:
    """The number of frames to sample; raises :class:`InputError` naming how many fit when the prompt would not."""
    fit = budget.frames_that_fit()
    if fit < 1:
        raise InputError(f"video {info.path}: not even one frame fits the token budget of {budget.max_tokens} "
                         f"({budget.explain()}); lower --max-new-tokens or raise --max-tokens")
    if frames is not None:
        if frames < 1:
            raise InputError(f"--frames must be >= 1, got {frames}")
        if frames > info.total:
            raise InputError(f"video {info.path}: holds {info.total} frames, fewer than the {frames} asked for "
                             f"(--frames); ask for at most {info.total}")
        if frames > fit:
            raise InputError(f"video {info.path}: {frames} frames need {budget.tokens_for(frames)} tokens, over the "
                             f"budget of {budget.max_tokens} ({budget.explain()}); {fit} frames fit: pass "
                             f"--frames {fit} or fewer, or raise --max-tokens")
        return frames
    count = frames_at_fps(info, fps)
    if count > fit:
        raise InputError(f"video {info.path} is too long for the token budget: {info.seconds:.0f} s at {fps:g} fps "
                         f"gives {count} frames = {budget.tokens_for(count)} tokens, over the budget of "
                         f"{budget.max_tokens} ({budget.explain()}); {fit} frames fit: pass --frames {fit} "
                         f"(or fewer) to sample {fit} frames uniformly, lower --fps, or raise --max-tokens")
    return count


def load_frames(info: VideoInfo, count: int, image_size: int, *, fps: float | None = None) -> np.ndarray:
    """Decodes ``count`` frames (uniform, or at ``fps`` when given): float32 ``[count, S, S, 3]`` normalized."""
    from longvila_jax.data.video import FrameSpec, MediaError, load_video

    spec = FrameSpec(num_frames=count, fps=fps, image_size=image_size)
    try:
        pixels = load_video(info.path, spec)
    except MediaError as err:
        raise InputError(f"video {info.path}: {err.reason}: {err.message}; check the file or re-encode it") from None
    return pixels


def load_image_frame(path, image_size: int) -> np.ndarray:
    """One image as one normalized frame ``[1, S, S, 3]``; raises :class:`InputError`."""
    from longvila_jax.data.video import FrameSpec, MediaError, load_image

    if not Path(path).exists():
        raise InputError(f"image {path}: no such file")
    try:
        return load_image(str(path), FrameSpec(num_frames=1, image_size=image_size))
    except MediaError as err:
        raise InputError(f"image {path}: {err.reason}: {err.message}") from None
