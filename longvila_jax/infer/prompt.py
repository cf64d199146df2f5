"""Prompt ids for a video question, through the checkpoint's chat template.

The user turn is ``"<video>\\n" + question`` (the layout of the training
manifests and of ``data.text``); the rendered template is split at the
marker and each frame becomes one placeholder id (``image_token_id``,
spliced into ``T`` visual tokens by the model) followed by the ids of
``"\\n"``, as the data pipeline does.  Pieces are tokenized without added
special tokens (the template writes them).  A tokenizer with no chat
template gets the plain text after its BOS token.

The text after the frames is tokenized as it is when the answer follows it
(as in a training conversation): byte-level BPE splits a trailing
``"\\n\\n"`` differently at the end of a string than before a word, so
the prompt is encoded with the answer (or a probe character) appended and
cut at the answer's first character (``split_at``).

Stop ids: the tokenizer's EOS, the ``eos_token_id`` of the checkpoint's
``generation_config.json`` (int or list) and the end-of-turn tokens of the
Llama-3 and ChatML templates that the vocabulary holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MARKER = "<video>"
END_OF_TURN = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


PROBE = "x"  # stands for the answer's first character when no answer is given


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def split_at(tokenizer, text: str, cut: int) -> tuple[list[int], list[int]]:
    """``text`` tokenized whole, split into the tokens that end by character ``cut`` and the rest.

    A token that straddles ``cut`` goes to the rest (for scoring it holds the
    answer's first characters; whitespace before them is ignored).
    """
    if not text:
        return [], []
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    head = sum(1 for _, end in encoding["offset_mapping"] if end <= cut)
    return ids[:head], ids[head:]


def render(tokenizer, user_text: str, system: str | None = None) -> str:
    """The chat-template text of one user turn with the generation prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (tokenizer.bos_token or "") + user_text


def video_prompt_with_answer(tokenizer, question: str, answer: str | None, num_frames: int, image_token_id: int, *,
                             system: str | None = None) -> tuple[np.ndarray, int]:
    """int32 ``[L]``: the prompt with ``num_frames`` placeholders (each then ``"\\n"``) followed by the
    answer's tokens, and the number of answer tokens (0 when ``answer`` is None: the prompt alone)."""
    text = render(tokenizer, (MARKER + "\n" if num_frames else "") + question, system)
    before, _, after = text.partition(MARKER)
    frame = [image_token_id] + _encode(tokenizer, "\n")
    prompt, rest = split_at(tokenizer, after + (PROBE if answer is None else answer), len(after))
    answer_ids = [] if answer is None else rest
    ids = _encode(tokenizer, before) + frame * num_frames + prompt + answer_ids
    return np.asarray(ids, np.int32), len(answer_ids)


def video_prompt_ids(tokenizer, question: str, num_frames: int, image_token_id: int, *,
                     system: str | None = None) -> np.ndarray:
    """int32 ``[L]``: the prompt with ``num_frames`` placeholders, ending with the generation prompt."""
    return video_prompt_with_answer(tokenizer, question, None, num_frames, image_token_id, system=system)[0]


def newline_tokens(tokenizer) -> int:
    """Text tokens that follow each frame's placeholder."""
    return len(_encode(tokenizer, "\n"))


def stop_token_ids(tokenizer, checkpoint: str | Path | None = None) -> list[int]:
    """Ids that end generation (see module doc), sorted, no duplicates."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_OF_TURN if t in vocab)
    if checkpoint is not None:
        for folder in (Path(checkpoint) / "llm", Path(checkpoint)):
            config = folder / "generation_config.json"
            if config.exists():
                eos = json.loads(config.read_text()).get("eos_token_id")
                ids.update(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
                break
    return sorted(ids)
