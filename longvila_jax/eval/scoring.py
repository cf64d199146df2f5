"""Scoring of needle answers (V-NIAH).

* ``normalize``: lower case, every whitespace character removed.
* Teacher-forced (as the reference scores V-NIAH): the prompt is followed by
  the answer's tokens; the argmax of the logits that predict those tokens,
  decoded, must equal the answer after ``normalize``.
* Generation: the generated text must contain the answer after ``normalize``.
"""

from __future__ import annotations

import re

import numpy as np


def normalize(text: str) -> str:
    """Lower case with all whitespace removed."""
    return re.sub(r"\s+", "", text).lower()


def answer_span_indices(prompt_length: int, answer_length: int) -> np.ndarray:
    """Natural indices ``[answer_length]`` whose logits predict the answer tokens that follow a prompt."""
    return np.arange(prompt_length - 1, prompt_length - 1 + answer_length)


def teacher_forced_prediction(span_logits: np.ndarray) -> np.ndarray:
    """Argmax ids ``[A]`` of the logits ``[A, V]`` over the answer span."""
    return np.argmax(np.asarray(span_logits), axis=-1)


def teacher_forced_correct(predicted_text: str, answer: str) -> bool:
    """The decoded argmax of the answer span equals the answer, case and spaces ignored."""
    return normalize(predicted_text) == normalize(answer)


def generation_correct(generated_text: str, answer: str) -> bool:
    """The generated text contains the answer, case and spaces ignored (an empty answer never matches)."""
    target = normalize(answer)
    return bool(target) and target in normalize(generated_text)
