"""Video and image frames for the vision tower: sample, decode (PyAV, seeking), resize, normalize.

Frame sampling (:func:`sample_indices`), for a video of ``total`` frames at
``video_fps`` frames/s:

* uniform: ``n = num_frames`` indices ``round(linspace(0, total - 1, n))``
  (first and last frame included); a video with fewer than ``num_frames``
  frames is bad input (``too_few_frames``).
* fps cap (``fps`` set): ``n = min(num_frames, max(1, floor(total / video_fps * fps)), total)``
  frames, spread the same way; short videos give fewer frames, by design.

Decoding (:func:`decode_frames`) visits the wanted frames in order and seeks
(to the key frame before a target) only when the target lies more than
``gap`` frames ahead of the decoder; ``gap`` starts at ``seek_gap`` and
grows to the key-frame distance observed whenever a seek lands behind the
decoder, so a file with sparse key frames is never decoded twice over. Only
the wanted frames are converted (swscale: resize + RGB in one pass).

Output of :func:`load_video` / :func:`load_image`: float32 ``[n, H, W, 3]``
(frames, height, width, RGB), ``(pixel / 255 - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from longvila_jax.data import errors

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class MediaError(Exception):
    """A media file that cannot give the frames asked for; ``reason`` is one of ``errors.REASONS``."""

    def __init__(self, path: str, reason: str, message: str):
        self.path, self.reason, self.message = str(path), reason, message
        super().__init__(f"{path}: {reason}: {message}")

    def skip(self, epoch: int = 0) -> errors.Skip:
        return errors.Skip(self.path, self.reason, self.message, epoch)


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """How frames are sampled and preprocessed.

    ``num_frames``: frames per video (at most, with ``fps``); ``fps``: cap in
    frames per second of video, or None for uniform sampling; ``image_size``:
    tower resolution, int (square) or ``(height, width)`` (SigLIP: 384, 448);
    ``mean``/``std``: per channel, on ``[0, 1]`` pixels; ``interpolation``: a
    swscale / PIL resampling name; ``decoder_threads``: FFmpeg threads per
    decoder (1: parallelism comes from the pipeline's workers);
    ``seek_gap``: initial frames-ahead threshold for seeking.
    """

    num_frames: int = 8
    fps: float | None = None
    image_size: int | tuple[int, int] = 384
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD
    interpolation: str = "BICUBIC"
    decoder_threads: int = 1
    seek_gap: int = 16

    @property
    def hw(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"FrameSpec.num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"FrameSpec.fps must be > 0 or None, got {self.fps}")


def sample_indices(total: int, video_fps: float, num_frames: int, fps: float | None = None) -> np.ndarray:
    """Frame indices int64 ``[n]``, increasing, to take from a video of ``total`` frames (see module doc).

    Raises ``ValueError`` when uniform sampling asks for more frames than the video has.
    """
    if total < 1:
        raise ValueError("the video has no frame")
    if fps is None:
        n = num_frames
        if total < n:
            raise ValueError(f"the video has {total} frames, fewer than the {n} asked for")
    else:
        n = min(num_frames, max(1, math.floor(total / video_fps * fps + 1e-9)), total)
    return np.round(np.linspace(0, total - 1, n)).astype(np.int64)


def normalize(frames: np.ndarray, mean=SIGLIP_MEAN, std=SIGLIP_STD) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` -> float32 ``(x / 255 - mean) / std``, same shape.

    Two passes over rows of ``W*3`` values with the per-channel constants tiled
    along the row (a length-3 inner loop is 5x slower in NumPy).
    """
    frames = np.asarray(frames)
    width = frames.shape[-2] * 3
    scale = np.tile((1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32), width // 3)
    shift = np.tile((np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32), width // 3)
    out = np.empty(frames.shape, np.float32)
    flat = out.reshape(-1, width)
    np.multiply(frames.reshape(-1, width), scale, out=flat)
    np.subtract(flat, shift, out=flat)
    return out


@dataclasses.dataclass
class VideoInfo:
    """What the container header says: frame count, average rate, time base, start pts."""

    total: int
    fps: float
    time_base: float
    start_pts: int


def _probe(container, path) -> tuple[object, VideoInfo]:
    if not container.streams.video:
        raise MediaError(path, errors.CORRUPT, "the file has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(path, errors.CORRUPT, "the video stream has no frame rate")
    fps = float(rate)
    time_base = float(stream.time_base) if stream.time_base else 1.0 / fps
    total = int(stream.frames or 0)
    if total <= 0:
        if stream.duration:
            seconds = stream.duration * time_base
        elif container.duration:
            seconds = container.duration / 1_000_000
        else:
            raise MediaError(path, errors.CORRUPT, "the header gives neither a frame count nor a duration")
        total = int(round(seconds * fps))
    return stream, VideoInfo(total, fps, time_base, int(stream.start_time or 0))


@dataclasses.dataclass
class DecodeStats:
    """Frames decoded (all, including those skipped over) and seeks made, for one file."""

    decoded: int = 0
    seeks: int = 0


def decode_frames(path: str, spec: FrameSpec, stats: DecodeStats | None = None) -> np.ndarray:
    """Sampled frames of one video as uint8 RGB ``[n, H, W, 3]`` at ``spec.hw``.

    Raises :class:`MediaError` (missing, corrupt, truncated, too_few_frames).
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    if not os.path.exists(path):
        raise MediaError(path, errors.MISSING, "no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(path, errors.CORRUPT, f"cannot open: {e}") from None
    try:
        stream, info = _probe(container, path)
        stream.thread_count = spec.decoder_threads
        try:
            indices = sample_indices(info.total, info.fps, spec.num_frames, spec.fps)
        except ValueError as e:
            raise MediaError(path, errors.TOO_FEW_FRAMES, str(e)) from None
        return _decode_indices(container, stream, info, indices, spec, stats, path)
    finally:
        container.close()


def _decode_indices(container, stream, info: VideoInfo, indices, spec, stats, path) -> np.ndarray:
    import av

    height, width = spec.hw
    out = np.empty((len(indices), height, width, 3), np.uint8)
    per_pts = 1.0 / (info.time_base * info.fps)  # pts units per frame

    def index_of(frame, previous):
        if frame.pts is None:
            return previous + 1
        return int(round((frame.pts - info.start_pts) / per_pts))

    frames = container.decode(stream)
    next_index, gap, last = 0, spec.seek_gap, -1
    for slot, target in enumerate(indices):
        target = int(target)
        sought = False
        if target - next_index > gap:
            try:
                container.seek(info.start_pts + int(round(target * per_pts)), stream=stream, backward=True)
                frames = container.decode(stream)
                stats.seeks += 1
                sought = True
            except (av.error.FFmpegError, OSError):  # not seekable: decode straight through
                gap = math.inf
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except (av.error.FFmpegError, OSError) as e:
                raise MediaError(path, errors.TRUNCATED,
                                 f"decoding breaks at frame {last + 1} of {info.total} announced ({e})") from None
            if frame is None:
                raise MediaError(path, errors.TRUNCATED,
                                 f"the stream ends after frame {last} of {info.total} announced "
                                 f"(frame {target} was needed)")
            stats.decoded += 1
            index = index_of(frame, last)
            if sought:
                if index < next_index:  # landed behind the decoder: key frames are sparser than gap
                    gap = max(gap, target - index)
                sought = False
            last, next_index = index, index + 1
            if index >= target:
                rgb = frame.reformat(width=width, height=height, format="rgb24",
                                     interpolation=spec.interpolation)
                out[slot] = rgb.to_ndarray()
                break
    return out


def load_video(path: str, spec: FrameSpec, stats: DecodeStats | None = None) -> np.ndarray:
    """Sampled, resized, normalized frames of a video: float32 ``[n, H, W, 3]``."""
    return normalize(decode_frames(path, spec, stats), spec.mean, spec.std)


def load_image(path: str, spec: FrameSpec) -> np.ndarray:
    """One image as one frame: float32 ``[1, H, W, 3]``. Raises :class:`MediaError`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise MediaError(path, errors.MISSING, "no such file")
    height, width = spec.hw
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB").resize((width, height), getattr(Image.Resampling, spec.interpolation))
    except UnidentifiedImageError as e:
        raise MediaError(path, errors.CORRUPT, f"not an image ({e})") from None
    except OSError as e:
        reason = errors.TRUNCATED if "truncated" in str(e) else errors.CORRUPT
        raise MediaError(path, reason, f"cannot read the image ({e})") from None
    return normalize(np.asarray(rgb, np.uint8)[None], spec.mean, spec.std)
