"""Synthetic data that needs nothing from the internet: needle videos, frame-index codes, text documents.

* :func:`burn_index` / :func:`read_index`: a frame index written as a 4x4
  grid of black/white blocks (16 bits, robust to lossy coding and resizing),
  read back from decoded uint8 or normalized float frames.
* :func:`write_video`: uint8 ``[n, H, W, 3]`` frames -> an H.264 MP4 (PyAV;
  moov atom first, so a truncated copy still opens).
* :func:`make_needle_video` / :func:`make_needle_dataset`: long videos with
  one "needle" frame showing a digit, a colour or a shape among noisy
  distractor frames, with a question and its answer (a manifest record).
* :func:`make_text_documents`: filler documents with a pass key, for the
  text-only context-extension stage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

GRID = 4  # blocks per side of the index code; 16 bits

_DIGITS = {  # 3x5 bitmap font
    "0": ["111", "101", "101", "101", "111"], "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"], "3": ["111", "001", "111", "001", "111"],
    "4": ["101", "101", "111", "001", "001"], "5": ["111", "100", "111", "001", "111"],
    "6": ["111", "100", "111", "101", "111"], "7": ["111", "001", "010", "010", "010"],
    "8": ["111", "101", "111", "101", "111"], "9": ["111", "101", "111", "001", "111"],
}
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 50), "blue": (30, 60, 220), "yellow": (235, 215, 30),
           "purple": (140, 40, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
WORDS = ("the", "a", "of", "and", "to", "in", "is", "it", "on", "was", "for", "with", "as", "at", "by", "from",
         "river", "stone", "light", "garden", "window", "market", "winter", "music", "silver", "morning",
         "road", "story", "paper", "cloud", "field", "city", "bridge", "forest", "quiet", "green", "old",
         "small", "long", "warm", "bright", "slow", "walks", "sees", "holds", "finds", "opens", "keeps")


def burn_index(frame: np.ndarray, index: int) -> np.ndarray:
    """Writes ``index`` (< 2**16) into uint8 ``[H, W, 3]`` as a 4x4 block code (bit b -> block b, row major)."""
    if not 0 <= index < 2 ** (GRID * GRID):
        raise ValueError(f"index {index} does not fit {GRID * GRID} bits")
    out = frame.copy()
    height, width = frame.shape[:2]
    bh, bw = height // GRID, width // GRID
    for bit in range(GRID * GRID):
        r, c = divmod(bit, GRID)
        out[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255 if (index >> bit) & 1 else 0
    return out


def read_index(frame: np.ndarray) -> int:
    """Reads the block code of :func:`burn_index` from ``[H, W, 3]`` (uint8, or normalized float around 0)."""
    frame = np.asarray(frame)
    threshold = 127.5 if frame.dtype == np.uint8 else float((frame.max() + frame.min()) / 2)
    height, width = frame.shape[:2]
    bh, bw = height // GRID, width // GRID
    value = 0
    for bit in range(GRID * GRID):
        r, c = divmod(bit, GRID)
        block = frame[r * bh + bh // 4:(r + 1) * bh - bh // 4, c * bw + bw // 4:(c + 1) * bw - bw // 4]
        if block.astype(np.float32).mean() > threshold:
            value |= 1 << bit
    return value


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 10, gop: int = 12, crf: int = 12,
                codec: str = "libx264") -> Path:
    """Writes uint8 ``[n, H, W, 3]`` RGB frames (H, W even) as an MP4 with a key frame every ``gop`` frames."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, np.uint8)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(gop), "bf": "0",
                          "sc_threshold": "0"} if codec == "libx264" else {"g": str(gop)}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def indexed_frames(num_frames: int, size: int = 64) -> np.ndarray:
    """uint8 ``[num_frames, size, size, 3]``; frame i carries the block code of i."""
    blank = np.zeros((size, size, 3), np.uint8)
    return np.stack([burn_index(blank, i) for i in range(num_frames)])


def _distractor(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey-ish frame of coarse random blocks (never a saturated colour, digit or shape)."""
    coarse = rng.integers(70, 180, size=(size // 8, size // 8, 1), dtype=np.uint8)
    tint = rng.integers(-12, 12, size=(1, 1, 3))
    frame = np.clip(coarse.astype(np.int16) + tint, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(frame, 8, axis=0), 8, axis=1)


def draw_digit(digit: str, size: int = 64) -> np.ndarray:
    """uint8 ``[size, size, 3]``: a black digit on white, filling most of the frame."""
    frame = np.full((size, size, 3), 255, np.uint8)
    cell = size // 7
    top, left = (size - 5 * cell) // 2, (size - 3 * cell) // 2
    for r, row in enumerate(_DIGITS[digit]):
        for c, bit in enumerate(row):
            if bit == "1":
                frame[top + r * cell:top + (r + 1) * cell, left + c * cell:left + (c + 1) * cell] = 0
    return frame


def draw_shape(shape: str, size: int = 64) -> np.ndarray:
    """uint8 ``[size, size, 3]``: a black circle, square, triangle or cross on white."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1  # [-1, 1]
    if shape == "circle":
        inside = x ** 2 + y ** 2 < 0.6
    elif shape == "square":
        inside = (abs(x) < 0.6) & (abs(y) < 0.6)
    elif shape == "triangle":
        inside = (y < 0.6) & (y > -0.7 + 2 * abs(x))
    elif shape == "cross":
        inside = ((abs(x) < 0.2) | (abs(y) < 0.2)) & (abs(x) < 0.8) & (abs(y) < 0.8)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    frame = np.full((size, size, 3), 255, np.uint8)
    frame[inside] = 0
    return frame


def make_needle_video(path: str | os.PathLike, rng: np.random.Generator, *, num_frames: int = 64,
                      size: int = 64, fps: int = 8, kind: str = "digit", needle_frame: int | None = None,
                      gop: int = 16) -> dict:
    """Writes one needle video; returns its manifest record (``video`` is the file name).

    The record has ``conversations`` (question, answer), ``answer``,
    ``needle_frame`` (index of the needle) and ``kind``.
    """
    needle = int(rng.integers(num_frames)) if needle_frame is None else int(needle_frame)
    if kind == "digit":
        answer = str(rng.integers(10))
        image, question = draw_digit(answer, size), "What digit is shown in one frame of the video?"
    elif kind == "colour":
        answer = str(rng.choice(list(COLOURS)))
        image, question = np.full((size, size, 3), COLOURS[answer], np.uint8), \
            "One frame of the video is a single colour. Which colour?"
    elif kind == "shape":
        answer = str(rng.choice(SHAPES))
        image, question = draw_shape(answer, size), "What shape is drawn in one frame of the video?"
    else:
        raise ValueError(f"unknown needle kind {kind!r}; use digit, colour or shape")
    frames = np.stack([image if i == needle else _distractor(rng, size) for i in range(num_frames)])
    write_video(path, frames, fps=fps, gop=gop)
    return {"video": Path(path).name, "kind": kind, "needle_frame": needle, "answer": answer,
            "conversations": [{"from": "human", "value": f"<video>\n{question}"},
                              {"from": "gpt", "value": answer}]}


def make_needle_dataset(root: str | os.PathLike, num_videos: int, *, seed: int = 0, num_frames: int = 64,
                        size: int = 64, fps: int = 8, kinds=("digit", "colour", "shape"),
                        progress: bool = True) -> Path:
    """Writes ``num_videos`` needle videos under ``root`` and ``root/manifest.jsonl``; returns the manifest path."""
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = root / "manifest.jsonl"
    with open(manifest, "w") as f:
        for i in tqdm(range(num_videos), desc="needle videos", disable=not progress):
            record = make_needle_video(root / f"needle_{i:05d}.mp4", rng, num_frames=num_frames, size=size,
                                       fps=fps, kind=kinds[i % len(kinds)])
            f.write(json.dumps(record) + "\n")
    return manifest


def bad_manifest_lines(root: str | os.PathLike, rng: np.random.Generator, *, num_frames: int = 8,
                       long_words: int = 3000) -> dict[str, str]:
    """One manifest line (JSON text, paths relative to ``root``) per bad-input reason, files written.

    For a pipeline sampling ``num_frames`` frames per video: ``missing`` (no
    file), ``corrupt`` (random bytes), ``truncated`` (the second half of an
    MP4 cut off; its header still announces every frame), ``too_few_frames``
    (``num_frames // 2`` frames), ``empty_conversation`` (no turns),
    ``too_long`` (a question of ``long_words`` words), ``bad_record`` (not JSON).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    question = [{"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": "stone"}]
    good = indexed_frames(max(4 * num_frames, 32))
    write_video(root / "full.mp4", good, gop=8)
    data = (root / "full.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_video(root / "short.mp4", good[: max(1, num_frames // 2)], gop=8)
    words = " ".join(rng.choice(WORDS, size=long_words).tolist())
    records = {
        "missing": {"video": "missing.mp4", "conversations": question},
        "corrupt": {"video": "corrupt.mp4", "conversations": question},
        "truncated": {"video": "truncated.mp4", "conversations": question},
        "too_few_frames": {"video": "short.mp4", "conversations": question},
        "empty_conversation": {"video": "full.mp4", "conversations": []},
        "too_long": {"conversations": [{"from": "human", "value": words}, {"from": "gpt", "value": "ok"}]},
    }
    lines = {reason: json.dumps(record) for reason, record in records.items()}
    lines["bad_record"] = '{"video": "full.mp4", "conversations": [unquoted'
    return lines


def make_text_documents(num_documents: int, rng: np.random.Generator, *, min_words: int = 200,
                        max_words: int = 2000, passkey: bool = True) -> list[dict]:
    """Filler documents ``{"text", "passkey"}``: random sentences, one "The pass key is N." inside."""
    docs = []
    for _ in range(num_documents):
        n = int(rng.integers(min_words, max_words + 1))
        words = rng.choice(WORDS, size=n).tolist()
        key = int(rng.integers(10000, 99999))
        sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, n, 12)]
        if passkey:
            sentences.insert(int(rng.integers(len(sentences) + 1)), f"The pass key is {key}. Remember it.")
            sentences.append("What is the pass key? The pass key is " + str(key) + ".")
        docs.append({"text": " ".join(sentences), "passkey": key})
    return docs


def write_jsonl(path: str | os.PathLike, records) -> Path:
    """Writes dicts one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path
