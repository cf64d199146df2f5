"""One manifest record -> tokenized samples with their frames, or a counted skip.

:class:`SamplePreparer` is the pipeline's per-record map (run in grain's
threads or worker processes). It never raises for bad input: it returns

``{"epoch": int, "where": str, "samples": [sample, ...], "skip": Skip | None}``

with each sample ``{"input_ids": int32 [L], "label_mask": bool [L],
"frames": float32 [n, H, W, 3] | None, "num_frames": n}``. A conversation
record gives one sample; a text document gives one, or several pieces of at
most ``seq_len`` tokens with ``split_long``.
"""

from __future__ import annotations

import numpy as np

from longvila_jax.data import errors, text, video


class SamplePreparer:
    """Decodes media and tokenizes a record (see module doc).

    Args:
      tokenizer: Hugging Face fast tokenizer (with a chat template for conversations).
      frame_spec: :class:`video.FrameSpec`.
      seq_len: the row budget in tokens; longer samples are skipped (``too_long``).
      max_frames_per_row: frames a row may hold; samples with more are skipped.
      image_token_id: placeholder id (None: from the tokenizer, else -200).
      tokens_per_frame: placeholder slots per frame.
      documents: True for a text source (plain documents, all tokens labels).
      split_long: documents longer than ``seq_len`` are cut into pieces instead of skipped.
    """

    def __init__(self, tokenizer, frame_spec: video.FrameSpec, *, seq_len: int, max_frames_per_row: int,
                 image_token_id: int | None = None, tokens_per_frame: int = 1, documents: bool = False,
                 split_long: bool = True):
        self.tokenizer = tokenizer
        self.frame_spec = frame_spec
        self.seq_len, self.max_frames_per_row = seq_len, max_frames_per_row
        self.documents, self.split_long = documents, split_long
        self.image_token_id = text.resolve_image_token_id(tokenizer, image_token_id)
        self.conversation = None if documents else ConversationTokenizerCache(
            tokenizer, self.image_token_id, tokens_per_frame)

    def __call__(self, record: dict, epoch: int = 0) -> dict:
        where = str(record.get("_where", record.get("_index", "?")))
        out = {"epoch": int(epoch), "where": where, "samples": [], "skip": None}
        try:
            out["samples"] = self._documents(record) if self.documents else [self._conversation(record)]
        except video.MediaError as e:
            out["skip"] = errors.Skip(e.path, e.reason, e.message, epoch)
        except text.SampleError as e:
            out["skip"] = errors.Skip(where, e.reason, e.message, epoch)
        return out

    def _conversation(self, record: dict) -> dict:
        if "_bad_record" in record:
            raise text.SampleError(errors.BAD_RECORD, record["_bad_record"])
        text.to_messages(record.get("conversations"))  # cheap checks before decoding
        frames = None
        if record.get("video") is not None:
            frames = video.load_video(record["video"], self.frame_spec)
        elif record.get("image") is not None:
            frames = video.load_image(record["image"], self.frame_spec)
        num_frames = 0 if frames is None else int(frames.shape[0])
        if num_frames > self.max_frames_per_row:
            raise text.SampleError(errors.TOO_LONG, f"{num_frames} frames exceed the {self.max_frames_per_row} "
                                                    f"frames a row holds (max_frames_per_row)")
        ids, labels = self.conversation.get()(record["conversations"], num_frames)
        if ids.size > self.seq_len:
            raise text.SampleError(errors.TOO_LONG, f"{ids.size} tokens exceed the row budget seq_len={self.seq_len}")
        return {"input_ids": ids, "label_mask": labels, "frames": frames, "num_frames": num_frames}

    def _documents(self, record: dict) -> list[dict]:
        if "_bad_record" in record:
            raise text.SampleError(errors.BAD_RECORD, record["_bad_record"])
        if "_missing" in record:
            raise video.MediaError(record["_missing"], errors.MISSING, "no such file")
        ids, labels = text.tokenize_document(self.tokenizer, record)
        if ids.size > self.seq_len and not self.split_long:
            raise text.SampleError(errors.TOO_LONG, f"{ids.size} tokens exceed the row budget seq_len={self.seq_len}")
        pieces = []
        for start in range(0, ids.size, self.seq_len):
            piece = ids[start:start + self.seq_len]
            if piece.size >= 2:  # a 1-token piece has no target
                pieces.append({"input_ids": piece, "label_mask": labels[start:start + self.seq_len],
                               "frames": None, "num_frames": 0})
        return pieces


class ConversationTokenizerCache:
    """Builds the :class:`text.ConversationTokenizer` lazily (once per worker process; picklable)."""

    def __init__(self, tokenizer, image_token_id: int, tokens_per_frame: int):
        self.tokenizer, self.image_token_id, self.tokens_per_frame = tokenizer, image_token_id, tokens_per_frame
        self._value = None
        self.get()  # fail early on a tokenizer without a chat template

    def get(self) -> text.ConversationTokenizer:
        if self._value is None:
            self._value = text.ConversationTokenizer(self.tokenizer, image_token_id=self.image_token_id,
                                                     tokens_per_frame=self.tokens_per_frame)
        return self._value

    def __getstate__(self):
        return {**self.__dict__, "_value": None}


def sample_tokens(sample: dict) -> int:
    return int(np.asarray(sample["input_ids"]).size)
