"""Prompt ids against the data pipeline's tokenization of the same conversation (``data.text``), stop ids."""

import json

import numpy as np
import pytest

from longvila_jax.data.text import ConversationTokenizer
from longvila_jax.data.toy_tokenizer import build_toy_tokenizer
from longvila_jax.infer.prompt import stop_token_ids, video_prompt_ids, video_prompt_with_answer

IMAGE = -200


@pytest.mark.parametrize("style", ["llama3", "chatml"])
def test_prompt_matches_training_tokenization(style, rng):
    """The prompt is the prefix the model saw in training, and the answer span is the training labels' start."""
    tok = build_toy_tokenizer(style)
    conversations = ConversationTokenizer(tok, image_token_id=IMAGE)
    for answer in ("7", "purple", "a blue triangle"):
        frames = int(rng.integers(1, 5))
        question = "What shape is drawn in one frame of the video?"
        train_ids, labels = conversations([{"from": "human", "value": f"<video>\n{question}"},
                                           {"from": "gpt", "value": answer}], num_frames=frames)
        ids, answer_len = video_prompt_with_answer(tok, question, answer, frames, IMAGE)
        assert ids.tolist() == train_ids[:len(ids)].tolist()
        assert np.flatnonzero(labels)[:answer_len].tolist() == list(range(len(ids) - answer_len, len(ids)))
        assert tok.decode(ids[len(ids) - answer_len:].tolist()).strip() == answer
        prompt = video_prompt_ids(tok, question, frames, IMAGE)
        assert prompt.tolist() == ids[:len(ids) - answer_len].tolist()
        assert int(np.sum(prompt == IMAGE)) == frames


def test_stop_ids(tmp_path):
    llama = build_toy_tokenizer("llama3")
    vocab = llama.get_vocab()
    assert stop_token_ids(llama) == sorted({vocab["<|eot_id|>"], vocab["<|end_of_text|>"], vocab["<|im_end|>"],
                                            vocab["<|endoftext|>"]})
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert {7, 9} <= set(stop_token_ids(llama, tmp_path))
