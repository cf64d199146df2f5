"""Tokenization: conversations through the checkpoint's chat template, documents for text-only stages.

A conversation (``[{"from": "human"|"gpt"|"system", "value": str}, ...]``,
or ``role``/``content``) is rendered with the tokenizer's own chat template
(Llama-3 and Qwen2 ChatML checkpoints ship theirs). The media marker
(``<video>`` or ``<image>``; added at the start of the first user turn when a
sample has media and no marker) becomes, per frame, ``tokens_per_frame``
placeholder ids ``image_token_id`` followed by the tokens of ``"\\n"``.

Labels: a token is a label token iff it starts inside an assistant turn's
content or that turn's end-of-turn text (for example ``<|eot_id|>`` or
``<|im_end|>``; trailing whitespace excluded). The span of assistant turn
``i`` is found by rendering ``messages[:i]`` with the generation prompt and
``messages[:i + 1]`` without: both must be prefixes of the full rendering
(true of the Llama-3 and ChatML templates); a template for which they are not
is refused with a clear error.

Outputs: ``input_ids`` int32 ``[L]`` and ``label_mask`` bool ``[L]`` (True on
label tokens); the packer turns them into next-token targets.
"""

from __future__ import annotations

import numpy as np

from longvila_jax.data import errors

LEGACY_IMAGE_TOKEN_ID = -200
MEDIA_MARKERS = ("<video>", "<image>")
_SENTINEL = "\x00\x01media\x01\x00"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class SampleError(Exception):
    """A sample that cannot be used; ``reason`` is one of ``errors.REASONS``."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


def resolve_image_token_id(tokenizer, image_token_id: int | None = None) -> int:
    """``image_token_id`` if given, else the tokenizer's ``<image>`` id, else the legacy -200."""
    if image_token_id is not None:
        return int(image_token_id)
    token_id = tokenizer.convert_tokens_to_ids("<image>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        return LEGACY_IMAGE_TOKEN_ID
    return int(token_id)


def to_messages(conversations) -> list[dict]:
    """Manifest turns -> chat-template messages ``[{"role", "content"}]``; raises :class:`SampleError`."""
    if not conversations:
        raise SampleError(errors.EMPTY_CONVERSATION, "the sample has no conversation")
    if not isinstance(conversations, (list, tuple)):
        raise SampleError(errors.BAD_RECORD,
                          f"conversations must be a list of turns, got {type(conversations).__name__}")
    messages = []
    for turn in conversations:
        if not isinstance(turn, dict):
            raise SampleError(errors.BAD_RECORD, f"a turn must be an object with from/value, got {turn!r:.80}")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in _ROLES or not isinstance(content, str):
            raise SampleError(errors.BAD_RECORD,
                              f"a turn needs 'from' in {sorted(_ROLES)} and a string 'value', got {turn!r:.80}")
        messages.append({"role": _ROLES[role], "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise SampleError(errors.EMPTY_CONVERSATION, "the conversation has no assistant turn with text")
    return messages


class ConversationTokenizer:
    """Conversation (+ number of frames) -> ``(input_ids int32 [L], label_mask bool [L])``.

    Args:
      tokenizer: a Hugging Face fast tokenizer with a ``chat_template``.
      image_token_id: placeholder id (default: the tokenizer's ``<image>``, else -200).
      tokens_per_frame: placeholder slots per frame (1: the model expands each
        placeholder itself; the visual token count ``T``: the row already
        holds one slot per visual token, as MM-SP needs).
    """

    def __init__(self, tokenizer, *, image_token_id: int | None = None, tokens_per_frame: int = 1):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template; load the checkpoint's tokenizer "
                             "(Llama-3 and Qwen2 instruct checkpoints ship one) or set tokenizer.chat_template")
        if tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
        self.tokenizer = tokenizer
        self.image_token_id = resolve_image_token_id(tokenizer, image_token_id)
        self.tokens_per_frame = tokens_per_frame
        self.newline_ids = list(tokenizer.encode("\n", add_special_tokens=False))

    def frame_block(self, num_frames: int) -> list[int]:
        """Token ids standing for ``num_frames`` frames: per frame, the placeholders and ``"\\n"``."""
        return ([self.image_token_id] * self.tokens_per_frame + self.newline_ids) * num_frames

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def _label_spans(self, messages, full: str) -> list[tuple[int, int]]:
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start_text = self._render(messages[:i], True)
            end_text = self._render(messages[:i + 1], False)
            if not (full.startswith(start_text) and full.startswith(end_text)):
                raise ValueError("the chat template does not render a conversation as the concatenation of its "
                                 "turns, so assistant labels cannot be located; use a Llama-3 or ChatML template")
            spans.append((len(start_text), len(end_text.rstrip())))
        return spans

    def _encode(self, text: str, offset: int):
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = np.array([s for s, _ in encoding["offset_mapping"]], np.int64) + offset
        return list(encoding["input_ids"]), starts

    def __call__(self, conversations, num_frames: int = 0):
        """Turns and the sample's frame count -> ``(input_ids int32 [L], label_mask bool [L])``."""
        messages = to_messages(conversations)
        if num_frames:
            marked = False
            for message in messages:
                if message["role"] != "user":
                    continue
                for marker in MEDIA_MARKERS:
                    if marker in message["content"]:
                        message["content"] = message["content"].replace(marker, _SENTINEL, 1)
                        marked = True
                        break
                if marked:
                    break
            if not marked:
                first_user = next((m for m in messages if m["role"] == "user"), None)
                if first_user is None:
                    raise SampleError(errors.BAD_RECORD, "a sample with media needs a user turn to hold it")
                first_user["content"] = _SENTINEL + "\n" + first_user["content"]
        full = self._render(messages, False)
        spans = self._label_spans(messages, full)
        if num_frames:
            cut = full.index(_SENTINEL)
            before_ids, before_starts = self._encode(full[:cut], 0)
            after_ids, after_starts = self._encode(full[cut + len(_SENTINEL):], cut + len(_SENTINEL))
            block = self.frame_block(num_frames)
            ids = before_ids + block + after_ids
            starts = np.concatenate([before_starts, np.full(len(block), cut, np.int64), after_starts])
        else:
            ids, starts = self._encode(full, 0)
        label = np.zeros(len(ids), bool)
        for begin, end in spans:
            label |= (starts >= begin) & (starts < end)
        return np.asarray(ids, np.int32), label


def tokenize_document(tokenizer, document: dict) -> tuple[np.ndarray, np.ndarray]:
    """``{"text"}`` (bos + text + eos) or ``{"input_ids"}`` (as given) -> ids int32 ``[L]``, labels all True."""
    if "input_ids" in document:
        ids = np.asarray(document["input_ids"], np.int32)
        if ids.ndim != 1:
            raise SampleError(errors.BAD_RECORD, f"input_ids must be a flat list, got shape {ids.shape}")
    elif isinstance(document.get("text"), str):
        ids = list(tokenizer(document["text"], add_special_tokens=False)["input_ids"])
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        ids = np.asarray(ids, np.int32)
    else:
        raise SampleError(errors.BAD_RECORD, "a document needs a 'text' string or an 'input_ids' list")
    if ids.size < 2:
        raise SampleError(errors.EMPTY_CONVERSATION, "the document has fewer than 2 tokens")
    return ids, np.ones(ids.size, bool)
