"""Chat-template tokenization: frame placeholders and labels only on assistant turns."""

import numpy as np
import pytest

from longvila_jax.data import text
from longvila_jax.data.toy_tokenizer import build_toy_tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    return {style: build_toy_tokenizer(style) for style in ("llama3", "chatml")}


def _enc(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("style", ["llama3", "chatml"])
def test_video_conversation_hand_built(tokenizers, style, rng):
    tok = tokenizers[style]
    image_id = tok.convert_tokens_to_ids("<image>")
    newline = _enc(tok, "\n")
    frames = int(rng.integers(1, 5))
    conv = [{"from": "human", "value": "<video>\nWhat digit is shown?"}, {"from": "gpt", "value": "7"}]
    ids, labels = text.ConversationTokenizer(tok)(conv, frames)
    if style == "llama3":
        before = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        after = ("\nWhat digit is shown?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        answer = "7<|eot_id|>"
        tail = ""
    else:
        before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        after = "\nWhat digit is shown?<|im_end|>\n<|im_start|>assistant\n"
        answer = "7<|im_end|>"
        tail = "\n"
    # the text is cut only at the media: the rest is one piece (BPE may merge across turn text)
    expected = _enc(tok, before) + ([image_id] + newline) * frames + _enc(tok, after + answer + tail)
    assert ids.tolist() == expected
    # labels: exactly the answer and its end-of-turn token, a contiguous run before the tail
    end = len(ids) - len(_enc(tok, tail))
    run = np.flatnonzero(labels)
    assert run.tolist() == list(range(run[0], end))
    assert tok.decode(ids[labels].tolist()) == answer
    assert ids.dtype == np.int32 and (ids == image_id).sum() == frames


def test_labels_only_on_assistant_turns_multi_turn(tokenizers):
    tok = tokenizers["chatml"]
    conv = [{"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "circle"}]
    ids, labels = text.ConversationTokenizer(tok)(conv, 1)
    assert tok.decode(ids[labels].tolist()) == "red<|im_end|>circle<|im_end|>"
    # the user text and the system prompt are never labels
    assert "Shape" in tok.decode(ids[~labels].tolist()) and "Be brief." in tok.decode(ids[~labels].tolist())


def test_marker_added_when_missing_and_tokens_per_frame(tokenizers):
    tok = tokenizers["llama3"]
    image_id = tok.convert_tokens_to_ids("<image>")
    newline = _enc(tok, "\n")
    conv = [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A river."}]
    ids, _ = text.ConversationTokenizer(tok, tokens_per_frame=3)(conv, 2)
    block = ([image_id] * 3 + newline) * 2
    head = _enc(tok, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert ids[:len(head) + len(block)].tolist() == head + block
    # the marker's own "\n" follows the block, then the user text
    rest = _enc(tok, "\nDescribe.<|eot_id|>")
    assert ids[len(head) + len(block):len(head) + len(block) + len(rest)].tolist() == rest


def test_image_token_id_resolution():
    with_image = build_toy_tokenizer("chatml")
    without = build_toy_tokenizer("chatml", image_token=False)
    assert text.resolve_image_token_id(with_image) == with_image.convert_tokens_to_ids("<image>")
    assert text.resolve_image_token_id(without) == text.LEGACY_IMAGE_TOKEN_ID == -200
    assert text.resolve_image_token_id(with_image, 7) == 7
    ids, _ = text.ConversationTokenizer(without)([{"from": "human", "value": "<video> hi"},
                                                 {"from": "gpt", "value": "ok"}], 3)
    assert (ids == -200).sum() == 3


@pytest.mark.parametrize("conv, reason", [
    ([], "empty_conversation"), (None, "empty_conversation"),
    ([{"from": "human", "value": "hi"}], "empty_conversation"),
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}], "empty_conversation"),
    ([{"from": "robot", "value": "hi"}], "bad_record"),
    ("hello", "bad_record"),
])
def test_bad_conversations(tokenizers, conv, reason):
    with pytest.raises(text.SampleError) as info:
        text.ConversationTokenizer(tokenizers["chatml"])(conv, 0)
    assert info.value.reason == reason


def test_documents(tokenizers):
    tok = tokenizers["llama3"]
    ids, labels = text.tokenize_document(tok, {"text": "The river walks."})
    assert ids.tolist() == [tok.bos_token_id] + _enc(tok, "The river walks.") + [tok.eos_token_id]
    assert labels.all()
    ids, _ = text.tokenize_document(tok, {"input_ids": [5, 6, 7]})
    assert ids.tolist() == [5, 6, 7]
    with pytest.raises(text.SampleError, match="needs a 'text' string"):
        text.tokenize_document(tok, {"body": "x"})


def test_template_required():
    tok = build_toy_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        text.ConversationTokenizer(tok)
