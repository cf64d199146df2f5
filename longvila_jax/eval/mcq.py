"""Video multiple-choice QA (VideoMME format): ask, extract the letter, score overall and per duration class.

Questions of one video are asked as one batch (the video is decoded and
encoded once).  ``Answerer`` is anything with ``answer(video_path,
prompts) -> responses``: ``ModelAnswerer`` generates with a ``VideoChat``;
tests use stubs.  The output holds every answer and the accuracies.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol, Sequence

from longvila_jax.eval.choice import extract_choice, format_prompt
from longvila_jax.eval.mcq_data import Question, find_video, read_subtitles
from longvila_jax.infer.errors import InputError


class Answerer(Protocol):
    def answer(self, video: Path, prompts: list[str]) -> list[str]:
        """One response per prompt about ``video``."""


class ModelAnswerer:
    """Greedy generation with a ``VideoChat``: ``frames`` uniform frames (or ``fps``), short answers."""

    def __init__(self, chat, *, frames: int | None = 16, fps: float = 1.0, max_new_tokens: int = 16):
        self.chat, self.frames, self.fps, self.max_new_tokens = chat, frames, fps, max_new_tokens

    def answer(self, video: Path, prompts: list[str]) -> list[str]:
        return self.chat.ask(video, list(prompts), frames=self.frames, fps=self.fps,
                             max_new_tokens=self.max_new_tokens)


def _by_video(questions: Sequence[Question]) -> "OrderedDict[str, list[Question]]":
    groups: OrderedDict[str, list[Question]] = OrderedDict()
    for q in questions:
        groups.setdefault(q.video_id, []).append(q)
    return groups


def run_mcq(questions: Sequence[Question], videos_dir, answerer: Answerer, *, subtitles_dir=None,
            progress: bool = True) -> dict:
    """Returns ``{"answers": [...], "accuracy": {"overall", "by_duration", ...}}``.

    Every video is looked up before anything runs; a missing one raises
    :class:`InputError` listing them.
    """
    from tqdm.auto import tqdm

    groups = _by_video(questions)
    paths, missing = {}, []
    for video_id in groups:
        try:
            paths[video_id] = find_video(videos_dir, video_id)
        except InputError:
            missing.append(video_id)
    if missing:
        raise InputError(f"videos {videos_dir}: {len(missing)} of {len(groups)} videos are missing "
                         f"(e.g. {', '.join(missing[:5])}); every question's video must be there")
    answers = []
    with tqdm(total=len(questions), desc="multiple-choice", unit="question", disable=not progress) as bar:
        for video_id, group in groups.items():
            subtitles = read_subtitles(subtitles_dir, video_id)
            prompts = [format_prompt(q.question, q.options, subtitles) for q in group]
            responses = answerer.answer(paths[video_id], prompts)
            if len(responses) != len(prompts):
                raise RuntimeError(f"the answerer gave {len(responses)} responses to {len(prompts)} prompts")
            for q, response in zip(group, responses):
                choice = extract_choice(response, q.options)
                answers.append(dict(question_id=q.question_id, video_id=q.video_id, duration=q.duration,
                                    question=q.question, options=q.options, answer=q.answer, response=response,
                                    choice=choice, correct=choice == q.answer, subtitles=subtitles is not None))
            bar.update(len(group))
    return dict(answers=answers, accuracy=accuracy(answers))


def accuracy(answers: list[dict]) -> dict:
    """Overall and per-duration accuracy (unextractable answers count as wrong), with counts."""
    def score(rows):
        return dict(accuracy=sum(r["correct"] for r in rows) / len(rows) if rows else float("nan"), count=len(rows))

    classes = sorted({r["duration"] for r in answers})
    return dict(overall=score(answers)["accuracy"], count=len(answers),
                unextracted=sum(r["choice"] is None for r in answers),
                by_duration={c: score([r for r in answers if r["duration"] == c]) for c in classes})
