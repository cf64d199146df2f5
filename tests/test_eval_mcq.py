"""Video multiple-choice QA (VideoMME format) on a generated set with known answers.

A stub answerer (fixed responses in varied formats) checks the runner's
plumbing, prompts, batching per video, letter extraction and the
hand-computed accuracies; the real model path runs end to end through the
CLI on the tiny checkpoint and is checked against a direct ``VideoChat.ask``.
"""

import json

import numpy as np
import pytest

from longvila_jax.cli import main
from longvila_jax.data import synthetic
from longvila_jax.eval.choice import extract_choice, format_prompt
from longvila_jax.eval.mcq import run_mcq
from longvila_jax.eval.mcq_data import load_questions
from longvila_jax.infer.errors import InputError
from longvila_jax.infer.toy_checkpoint import write_toy_checkpoint
from longvila_jax.infer.video_chat import VideoChat

QUESTIONS = [
    dict(question_id="q1", videoID="vid_a", duration="short", question="What colour is the ball?",
         options=["A. red", "B. green", "C. blue", "D. yellow"], answer="B"),
    dict(question_id="q2", videoID="vid_a", duration="short", question="How many cats are there?",
         options=["A. one", "B. two", "C. three", "D. four"], answer="C"),
    dict(question_id="q3", videoID="vid_b", duration="long", question="Where does it happen?",
         options=["A. a park", "B. a kitchen", "C. a street", "D. a beach"], answer="D"),
    dict(question_id="q4", videoID="vid_b", duration="long", question="Who speaks first?",
         options=["A. the man", "B. the woman", "C. the child", "D. nobody"], answer="A"),
    dict(question_id="q5", video_id="vid_c", duration="medium", question="What is the weather?",
         options={"A": "sunny", "B": "rain", "C": "snow", "D": "fog"}, answer="C"),
]
# responses of the stub: q1 right, q2 right (phrase), q3 wrong, q4 no letter, q5 right (quotes the option)
RESPONSES = {"q1": "B", "q2": "The best answer is (C).", "q3": "A", "q4": "I cannot tell.", "q5": "It is snow."}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcq")
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    videos = root / "videos"
    for name in ("vid_a", "vid_b", "vid_c"):
        synthetic.write_video(videos / f"{name}.mp4", rng.integers(0, 255, size=(16, 32, 32, 3), dtype=np.uint8),
                              fps=8)
    subtitles = root / "subs"
    subtitles.mkdir()
    (subtitles / "vid_b.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\n<i>Hello</i> there\n\n"
                                         "2\n00:00:01,000 --> 00:00:02,000\nGoodbye\n")
    questions = root / "questions.json"
    questions.write_text(json.dumps(QUESTIONS))
    return dict(root=root, videos=videos, subtitles=subtitles, questions=questions)


class StubAnswerer:
    """Answers from ``RESPONSES`` by finding the question in the prompt; records every call."""

    def __init__(self):
        self.calls = []

    def answer(self, video, prompts):
        self.calls.append((video.name, list(prompts)))
        out = []
        for prompt in prompts:
            q = next(q for q in QUESTIONS if q["question"] in prompt)
            out.append(RESPONSES[q["question_id"]])
        return out


def test_runner_plumbing_with_stub(dataset):
    questions = load_questions(dataset["questions"])
    stub = StubAnswerer()
    result = run_mcq(questions, dataset["videos"], stub, subtitles_dir=dataset["subtitles"], progress=False)
    assert [c[0] for c in stub.calls] == ["vid_a.mp4", "vid_b.mp4", "vid_c.mp4"]  # one batch per video
    assert [len(c[1]) for c in stub.calls] == [2, 2, 1]
    vid_b_prompt = stub.calls[1][1][0]
    assert vid_b_prompt == format_prompt("Where does it happen?", QUESTIONS[2]["options"], "Hello there\nGoodbye")
    assert "subtitles" not in stub.calls[0][1][0]
    by_id = {a["question_id"]: a for a in result["answers"]}
    assert {k: a["choice"] for k, a in by_id.items()} == {"q1": "B", "q2": "C", "q3": "A", "q4": None, "q5": "C"}
    acc = result["accuracy"]
    assert acc["overall"] == pytest.approx(3 / 5) and acc["count"] == 5 and acc["unextracted"] == 1
    assert acc["by_duration"] == {"long": dict(accuracy=0.0, count=2), "medium": dict(accuracy=1.0, count=1),
                                  "short": dict(accuracy=1.0, count=2)}


def test_missing_video_and_bad_records(dataset, tmp_path):
    questions = load_questions(dataset["questions"]) + load_questions(_write(tmp_path / "x.json", [
        dict(QUESTIONS[0], videoID="vid_gone", question_id="q9")]))
    with pytest.raises(InputError, match="1 of 4 videos are missing.*vid_gone"):
        run_mcq(questions, dataset["videos"], StubAnswerer(), progress=False)
    with pytest.raises(InputError, match="record 0: answer 'E' is not one of the option letters ABCD"):
        load_questions(_write(tmp_path / "bad.json", [dict(QUESTIONS[0], answer="E")]))
    with pytest.raises(InputError, match="record 0 lacks options"):
        load_questions(_write(tmp_path / "bad2.json", [{k: v for k, v in QUESTIONS[0].items() if k != "options"}]))


def test_parquet_questions(dataset, tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "q.parquet").write_bytes(b"PAR1")
        with pytest.raises(InputError, match="Parquet needs pyarrow"):
            load_questions(tmp_path / "q.parquet")
        return
    rows = [q for q in QUESTIONS if isinstance(q["options"], list)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    assert load_questions(tmp_path / "q.parquet") == load_questions(_write(tmp_path / "q.json", rows))


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


def test_cli_real_model_end_to_end(dataset, tmp_path, seed):
    checkpoint = write_toy_checkpoint(tmp_path / "ckpt", seed=seed, style=None)  # no tokenizer in llm/
    out = tmp_path / "answers.json"
    args = ["eval", "mcq", "--model", str(checkpoint), "--tokenizer", "toy:llama3",
            "--questions", str(dataset["questions"]),
            "--videos", str(dataset["videos"]), "--subtitles", str(dataset["subtitles"]), "--frames", "2",
            "--max-new-tokens", "4", "--out", str(out), "--ring", "4"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    answers = result["answers"]
    assert [a["question_id"] for a in answers] == ["q1", "q2", "q3", "q4", "q5"]
    for a in answers:
        assert a["choice"] == extract_choice(a["response"], a["options"])
        assert a["correct"] == (a["choice"] == a["answer"])
    assert result["accuracy"]["overall"] == pytest.approx(np.mean([a["correct"] for a in answers]))
    assert {c: s["count"] for c, s in result["accuracy"]["by_duration"].items()} == dict(long=2, medium=1, short=2)
    with pytest.raises(InputError, match="no tokenizer files"):
        VideoChat.from_pretrained(checkpoint)
    chat = VideoChat.from_pretrained(checkpoint, tokenizer="toy:llama3")  # one device, asked directly
    prompt = format_prompt(QUESTIONS[2]["question"], QUESTIONS[2]["options"], "Hello there\nGoodbye")
    assert chat.ask(dataset["videos"] / "vid_b.mp4", prompt, frames=2, max_new_tokens=4) == answers[2]["response"]
