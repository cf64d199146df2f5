"""V-NIAH end to end on the simulated 8-device mesh (tiny checkpoint, toy tokenizer).

The runner's teacher-forced predictions are checked against an independent
computation: the one-device full forward (``LongVILA.__call__``) over the
pixels of haystack + needle at the trial's depth, argmax over the answer
span.  The haystack and the needles are encoded once.  The CLI writes the
JSON of every trial and a heatmap PNG, from a user's haystack video and
needle folder in generation mode.
"""

import json

import numpy as np
import pytest
from PIL import Image

from longvila_jax.cli import main
from longvila_jax.data import synthetic
from longvila_jax.data.video import normalize as normalize_pixels
from longvila_jax.eval.haystack import generated_haystack
from longvila_jax.eval.needles import builtin_needles
from longvila_jax.eval.vniah import VNIAHConfig, needle_index, run_vniah
from longvila_jax.infer.prompt import video_prompt_with_answer
from longvila_jax.infer.toy_checkpoint import write_toy_checkpoint
from longvila_jax.infer.video_chat import VideoChat
from longvila_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    seed = int(np.random.SeedSequence().entropy % (1 << 30))
    print(f"checkpoint seed={seed}")
    return write_toy_checkpoint(tmp_path_factory.mktemp("vniah") / "ckpt", seed=seed)


def test_teacher_forced_trials_match_full_forward(checkpoint, seed):
    chat = VideoChat.from_pretrained(checkpoint, mesh=make_mesh(ring=4, ulysses=2))
    size = chat.model.config.vision.image_size
    needles = builtin_needles(size, count=2, seed=seed)
    haystack = generated_haystack(6, size, seed=seed)
    config = VNIAHConfig(lengths=(3, 6))
    calls = []
    encode = chat.generator.encode
    chat.generator.encode = lambda pixels: (calls.append(len(pixels)), encode(pixels))[1]
    result = run_vniah(chat, haystack, needles, config, progress=False)
    assert calls == [6, 2]  # the haystack once (longest length), the needles once
    trials = result["trials"]
    assert len(trials) == 2 * 6 * 2
    assert result["accuracy"]["overall"] == pytest.approx(np.mean([t["correct"] for t in trials]))

    tok, image = chat.tokenizer, chat.model.config.image_token_id
    for length, depth, j in ((3, 0.0, 0), (6, 0.6, 1), (6, 1.0, 0)):
        needle = needles[j]
        trial = next(t for t in trials if (t["length"], t["depth"], t["needle"]) == (length, depth, needle.name))
        i = needle_index(length, depth)
        frames = np.concatenate([haystack[:i], needle.image[None], haystack[i:length]])
        full, answer_len = video_prompt_with_answer(tok, needle.question, needle.answer, length + 1, image)
        assert tok.decode(full[-answer_len:].tolist()).strip() == needle.answer
        logits = np.asarray(chat.model(full[None], normalize_pixels(frames)))[0]
        start = len(full) - answer_len - (length + 1) + (length + 1) * 16 - 1
        expected = tok.decode(np.argmax(logits[start:start + answer_len], -1).tolist(), skip_special_tokens=True)
        assert trial["prediction"] == expected
        assert trial["correct"] == (expected.replace(" ", "").lower() == needle.answer.replace(" ", "").lower())


def test_cli_user_haystack_and_needles_generate_mode(checkpoint, tmp_path, rng):
    video = tmp_path / "haystack.mp4"
    synthetic.write_video(video, rng.integers(0, 255, size=(40, 64, 64, 3), dtype=np.uint8), fps=8)  # 5 s
    needles = tmp_path / "needles"
    needles.mkdir()
    Image.fromarray(synthetic.draw_shape("triangle", 80)).save(needles / "tri.png")
    (needles / "needles.json").write_text(json.dumps([{"image": "tri.png", "question": "Which shape?",
                                                       "answer": "triangle"}]))
    out = tmp_path / "out"
    args = ["eval", "vniah", "--model", str(checkpoint), "--out", str(out), "--haystack", str(video),
            "--needles", str(needles), "--lengths", "2,4", "--depths", "0,0.5,1", "--mode", "generate",
            "--max-new-tokens", "3", "--ring", "2", "--ulysses", "2", "--batch-tokens", "40"]  # one depth a batch
    assert main(args) == 0
    result = json.loads((out / "vniah.json").read_text())
    assert len(result["trials"]) == 2 * 3
    assert {(t["length"], t["depth"]) for t in result["trials"]} == {(n, d) for n in (2, 4) for d in (0, 0.5, 1)}
    for t in result["trials"]:
        assert t["correct"] == ("triangle" in t["prediction"].replace(" ", "").lower())
    assert np.array(result["accuracy"]["grid"]).shape == (3, 2)
    png = Image.open(out / "vniah.png")
    assert png.format == "PNG" and png.size[0] > 100
    assert result["config"]["mesh"]["ring"] == 2 and result["config"]["mesh"]["ulysses"] == 2
    too_long = args[:args.index("--lengths")] + ["--lengths", "9"] + args[args.index("--lengths") + 2:]
    assert main(too_long) == 2  # 5 s at 1 fps: 5 frames < 9
