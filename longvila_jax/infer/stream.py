"""Streaming one row's generated text to a console as tokens arrive."""

from __future__ import annotations

import sys
from typing import Callable


class TextStream:
    """An ``on_tokens`` callback for ``Generator.generate``: writes row ``row``'s new text (stop tokens and
    special tokens left out); holds back a trailing incomplete UTF-8 character until it is complete."""

    def __init__(self, tokenizer, stop_ids=(), *, row: int = 0, write: Callable[[str], object] | None = None):
        self.tokenizer, self.stop_ids, self.row = tokenizer, set(stop_ids), row
        self.write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        self.tokens: list[int] = []
        self.shown = 0

    def __call__(self, index, tokens, active) -> None:
        del index
        token = int(tokens[self.row])
        if not active[self.row] or token in self.stop_ids:
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)
