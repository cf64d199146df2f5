"""``longvila-jax generate`` and the ``VideoChat`` API on a tiny checkpoint with a local tokenizer.

Streaming prints exactly the final answer; a batch of prompts answers each
prompt as it would alone; stop tokens and the new-token cap end rows; the
frame budget's error names the number of frames that fit (found here by
brute force over prompt lengths); missing and unreadable videos fail with
clear errors before the model loads.
"""

import numpy as np
import pytest

from longvila_jax.cli import main
from longvila_jax.data import synthetic
from longvila_jax.infer.prompt import video_prompt_ids
from longvila_jax.infer.toy_checkpoint import write_toy_checkpoint
from longvila_jax.infer.video_chat import VideoChat

QUESTION = "What digit is shown in one frame of the video?"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    seed = int(np.random.SeedSequence().entropy % (1 << 30))
    print(f"checkpoint seed={seed}")
    checkpoint = write_toy_checkpoint(root / "ckpt", seed=seed)
    video = root / "video.mp4"
    synthetic.make_needle_video(video, np.random.default_rng(seed), num_frames=48, size=64, fps=8)  # 6 s
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return dict(checkpoint=str(checkpoint), video=str(video), broken=str(root / "broken.mp4"),
                missing=str(root / "missing.mp4"))


@pytest.fixture(scope="module")
def chat(files):
    return VideoChat.from_pretrained(files["checkpoint"])


def test_cli_streams_the_answer(files, chat, capsys):
    args = ["generate", "--model", files["checkpoint"], "--video", files["video"], "--prompt", QUESTION,
            "--max-new-tokens", "8", "--temperature", "1.0", "--top-p", "0.95", "--seed", "3", "--ring", "1"]
    assert main(args) == 0
    streamed = capsys.readouterr().out
    expected = chat.ask(files["video"], QUESTION, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    assert expected  # sampled tokens of a random model: some text
    assert streamed.strip() == expected
    other = chat.ask(files["video"], QUESTION, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=4)
    assert chat.ask(files["video"], QUESTION, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=4) == other


def test_batch_of_prompts_answers_each_alone(files, chat):
    questions = [QUESTION, "Which colour?", "What shape is drawn in one frame of the video? Say it."]
    batch = chat.ask(files["video"], questions, max_new_tokens=5, frames=4)
    alone = [chat.ask(files["video"], q, max_new_tokens=5, frames=4) for q in questions]
    assert batch == alone


def test_stop_tokens_and_cap(files, chat, rng):
    gen = chat.generator
    rows = [video_prompt_ids(chat.tokenizer, q, 2, chat.model.config.image_token_id) for q in (QUESTION, "Why?")]
    pixels = rng.uniform(-1, 1, size=(4, 56, 56, 3)).astype(np.float32)
    free = gen.generate(rows, pixel_values=pixels, max_new_tokens=6)
    assert [len(t) for t in free.tokens] == [6, 6] and free.finished == [False, False]
    stop = free.tokens[0][2]  # row 0 must stop right after its third token
    out = gen.generate(rows, pixel_values=pixels, max_new_tokens=6, stop_ids=[stop])
    first = free.tokens[0].index(stop)
    assert out.tokens[0] == free.tokens[0][:first + 1] and out.finished[0]
    cut = free.tokens[1].index(stop) + 1 if stop in free.tokens[1] else 6
    assert out.tokens[1] == free.tokens[1][:cut]


def _frames_that_fit(chat, budget, new_tokens):
    """Largest k whose prompt (k placeholders -> 16 tokens each) plus new tokens fits, by brute force."""
    image = chat.model.config.image_token_id
    best = 0
    for k in range(1, 200):
        ids = video_prompt_ids(chat.tokenizer, QUESTION, k, image)
        if len(ids) - k + k * 16 + new_tokens <= budget:
            best = k
    return best


def test_frame_budget_errors_name_what_fits(files, chat, capsys):
    assert chat.model.config.tokens_per_frame == 16
    budget, new = 100, 10
    fit = _frames_that_fit(chat, budget, new)
    assert 0 < fit < 6  # the 6 s video at 1 fps is too long for this budget
    base = ["generate", "--model", files["checkpoint"], "--video", files["video"], "--prompt", QUESTION,
            "--max-new-tokens", str(new), "--max-tokens", str(budget), "--ring", "2"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "too long for the token budget" in err and f"{fit} frames fit: pass --frames {fit} " in err
    assert main(base + ["--frames", str(fit + 1)]) == 2
    assert f"{fit} frames fit" in capsys.readouterr().err
    assert main(base + ["--frames", str(fit)]) == 0
    assert main(base + ["--frames", "49"]) == 2
    assert "holds 48 frames, fewer than the 49 asked for" in capsys.readouterr().err


@pytest.mark.parametrize("which, message", [("missing", "no such file"), ("broken", "cannot be read as a video")])
def test_bad_video_errors(files, capsys, which, message):
    args = ["generate", "--model", files["checkpoint"], "--video", files[which], "--prompt", QUESTION]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert files[which] in err and message in err
