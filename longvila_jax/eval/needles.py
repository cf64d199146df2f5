"""Needles for V-NIAH: an image, a question about it, and its answer.

Built in: generated images (a digit, a colour, a shape; ``data.synthetic``)
with their questions.  A user folder holds ``needles.json``, a list of
``{"image": file name, "question": str, "answer": str}``, and the images.
Images are uint8 RGB ``[H, W, 3]`` at the tower's resolution.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from longvila_jax.infer.errors import InputError


@dataclasses.dataclass(frozen=True)
class Needle:
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    question: str
    answer: str


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def builtin_needles(size: int, count: int = 3, seed: int = 0) -> list[Needle]:
    """``count`` generated needles cycling through digit, colour and shape, drawn at ``size`` pixels."""
    from longvila_jax.data import synthetic

    rng = np.random.default_rng(seed)
    needles = []
    for i in range(count):
        kind = ("digit", "colour", "shape")[i % 3]
        if kind == "digit":
            answer = str(rng.integers(10))
            image, question = synthetic.draw_digit(answer, size), "What digit is shown in one frame of the video?"
        elif kind == "colour":
            answer = str(rng.choice(list(synthetic.COLOURS)))
            image = np.full((size, size, 3), synthetic.COLOURS[answer], np.uint8)
            question = "One frame of the video is a single colour. Which colour?"
        else:
            answer = str(rng.choice(synthetic.SHAPES))
            image, question = synthetic.draw_shape(answer, size), "What shape is drawn in one frame of the video?"
        needles.append(Needle(f"{kind}-{answer}-{i}", _resize(image, size), question, answer))
    return needles


def load_needle_folder(folder, size: int) -> list[Needle]:
    """Needles from ``folder/needles.json``; raises :class:`InputError` naming the bad entry and the fix."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    index = folder / "needles.json"
    if not index.exists():
        raise InputError(f"needles {folder}: no needles.json; write a list of "
                         f'{{"image": "file.png", "question": "...", "answer": "..."}} there')
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{index}: not valid JSON ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{index}: must hold a non-empty list of needles")
    needles = []
    for i, entry in enumerate(entries):
        missing = [k for k in ("image", "question", "answer") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise InputError(f"{index}: entry {i} lacks {', '.join(missing)}; each needle needs image, question, "
                             f"answer")
        path = folder / entry["image"]
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), np.uint8)
        except FileNotFoundError:
            raise InputError(f"{index}: entry {i}: image {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{index}: entry {i}: {path} is not a readable image ({err})") from None
        needles.append(Needle(str(entry.get("name", Path(entry["image"]).stem)), _resize(rgb, size),
                              str(entry["question"]), str(entry["answer"])))
    return needles
