"""Scoring functions with hand-computed cases: V-NIAH (teacher-forced, generation), needle placement,
multiple-choice letter extraction and prompts."""

import numpy as np
import pytest

from longvila_jax.eval import scoring
from longvila_jax.eval.choice import extract_choice, format_prompt, option_texts
from longvila_jax.eval.vniah import needle_index, splice_needle, summarize, VNIAHConfig

OPTIONS = ["A. a red ball", "B. two cats", "C. the blue car", "D. nothing"]


def test_normalize_and_generation_mode():
    assert scoring.normalize("  The Blue\tCar \n") == "thebluecar"
    assert scoring.generation_correct("I think it is RED.", "red")
    assert scoring.generation_correct("the answer: 4 2", "42")  # spaces ignored
    assert not scoring.generation_correct("it is green", "red")
    assert not scoring.generation_correct("anything", "  ")  # an empty answer never matches


def test_teacher_forced_span_and_argmax():
    assert scoring.answer_span_indices(10, 3).tolist() == [9, 10, 11]
    logits = np.zeros((3, 6))
    logits[0, 4] = logits[1, 0] = logits[2, 5] = 1.0
    logits[1, 2] = 0.5
    assert scoring.teacher_forced_prediction(logits).tolist() == [4, 0, 5]


def test_teacher_forced_correct_with_a_tokenizer():
    from longvila_jax.data.toy_tokenizer import build_toy_tokenizer

    tok = build_toy_tokenizer()
    answer = "purple"
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    vocab = len(tok)
    logits = np.full((len(ids), vocab), -1.0)
    logits[np.arange(len(ids)), ids] = 3.0  # argmax spells the answer
    text = tok.decode(scoring.teacher_forced_prediction(logits).tolist())
    assert scoring.teacher_forced_correct(text, " Purple ")  # case and spaces ignored
    wrong = ids[:-1] + [tok(" red", add_special_tokens=False)["input_ids"][-1]]
    logits[len(ids) - 1] = -1.0
    logits[len(ids) - 1, wrong[-1]] = 3.0  # the last token of the span differs
    text = tok.decode(scoring.teacher_forced_prediction(logits).tolist())
    assert not scoring.teacher_forced_correct(text, answer)


def test_needle_placement_by_depth():
    hay = np.arange(5)[:, None, None] * np.ones((1, 2, 3))
    needle = np.full((1, 2, 3), 99.0)
    firsts = lambda length, depth: np.asarray(splice_needle(hay, needle, length, depth))[:, 0, 0].tolist()  # noqa
    assert firsts(5, 0.0) == [99, 0, 1, 2, 3, 4]
    assert firsts(5, 0.4) == [0, 1, 99, 2, 3, 4]
    assert firsts(5, 1.0) == [0, 1, 2, 3, 4, 99]
    assert firsts(4, 0.6) == [0, 1, 99, 2, 3]  # round(2.4) = 2; only the first 4 haystack frames
    assert needle_index(10, 0.8) == 8 and needle_index(3, 0.2) == 1


def test_summary_grid_hand_computed():
    config = VNIAHConfig(lengths=(4, 8), depths=(0.0, 1.0))
    trials = [dict(length=4, depth=0.0, correct=True), dict(length=4, depth=0.0, correct=False),
              dict(length=4, depth=1.0, correct=True), dict(length=8, depth=0.0, correct=False),
              dict(length=8, depth=1.0, correct=True), dict(length=8, depth=1.0, correct=True)]
    acc = summarize(trials, config)
    assert acc["grid"] == [[0.5, 0.0], [1.0, 1.0]]
    assert acc["overall"] == pytest.approx(4 / 6)
    assert acc["by_length"] == {"4": pytest.approx(2 / 3), "8": pytest.approx(2 / 3)}
    assert acc["by_depth"] == {"0": pytest.approx(1 / 3), "1": 1.0}


@pytest.mark.parametrize("response, letter", [
    ("B", "B"), ("(C)", "C"), ("c.", "C"), ("D: nothing", "D"), ("The best answer is B.", "B"),
    ("The correct answer is (D) because nothing happens", "D"), ("Answer: A", "A"),
    ("I would say option C here", "C"), ("A red ball is shown, so the answer is A", "A"),
    ("Two cats", "B"), ("the blue car drives by", "C"), ("A cat sleeps", None), ("", None),
    ("I am not sure", None), ("**B**", "B"), ("B) two cats", "B"),
])
def test_extract_choice(response, letter):
    assert extract_choice(response, OPTIONS) == letter


def test_options_and_prompt_format():
    assert option_texts(OPTIONS) == {"A": "a red ball", "B": "two cats", "C": "the blue car", "D": "nothing"}
    assert option_texts(["yes", "no"]) == {"A": "yes", "B": "no"}
    assert option_texts({"a": "x", "b": "y"}) == {"A": "x", "B": "y"}
    prompt = format_prompt("What is seen?", OPTIONS, subtitles="hello\nworld")
    assert prompt == ("This video's subtitles are listed below:\nhello\nworld\n"
                      "Select the best answer to the following multiple-choice question based on the video. "
                      "Respond with only the letter (A, B, C, or D) of the correct option.\nWhat is seen?\n"
                      "A. a red ball\nB. two cats\nC. the blue car\nD. nothing\nThe best answer is:")
