"""The token budget of one prompt: how many video frames fit.

A prompt of ``n`` frames costs ``text + n * per_frame + new`` positions:
``text`` the prompt's text tokens, ``per_frame`` the frame's visual tokens
plus its separator (``"\\n"``) tokens, ``new`` the tokens to generate.  The
budget is the model's context (``max_position_embeddings``) unless set.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FrameBudget:
    """``max_tokens`` positions for ``text_tokens`` + frames of ``per_frame`` tokens + ``new_tokens``."""

    max_tokens: int
    text_tokens: int
    per_frame: int
    new_tokens: int

    def tokens_for(self, frames: int) -> int:
        """Positions a prompt of ``frames`` frames uses, generation included."""
        return self.text_tokens + frames * self.per_frame + self.new_tokens

    def frames_that_fit(self) -> int:
        """The most frames whose prompt fits (0 when even the text does not)."""
        return max(0, (self.max_tokens - self.text_tokens - self.new_tokens) // self.per_frame)

    def explain(self) -> str:
        return (f"{self.text_tokens} text tokens + {self.per_frame} tokens per frame + "
                f"{self.new_tokens} new tokens")
