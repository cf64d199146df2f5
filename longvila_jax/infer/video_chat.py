"""Ask a LongVILA checkpoint about a video: the Python API behind ``longvila-jax generate``.

    chat = VideoChat.from_pretrained("path/to/checkpoint")          # one device, or mesh=...
    answer = chat.ask("video.mp4", "What happens?", max_new_tokens=64)
    answers = chat.ask("video.mp4", ["Who is there?", "Where?"])     # a batch of prompts, one video

Frames: ``frames=N`` uniform frames, else ``fps`` frames per second; the
prompt must fit ``max_tokens`` (default: the LLM's
``max_position_embeddings``), else :class:`InputError` says how many frames
fit.  The video is encoded once for every prompt of a batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from longvila_jax.infer.budget import FrameBudget
from longvila_jax.infer.errors import InputError
from longvila_jax.infer.generate import Generator
from longvila_jax.infer.media import choose_frame_count, load_frames, probe_video
from longvila_jax.infer.prompt import newline_tokens, stop_token_ids, video_prompt_ids
from longvila_jax.infer.stream import TextStream

DEFAULT_CONTEXT = 8192


class VideoChat:
    """A model, its tokenizer and a ``Generator`` on a mesh."""

    def __init__(self, model, tokenizer, *, mesh=None, max_tokens: int | None = None, stop_ids=None,
                 system: str | None = None):
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.generator = Generator(model, mesh)
        context = model.config.llm.hf.get("max_position_embeddings", DEFAULT_CONTEXT)
        self.max_tokens = int(max_tokens or context)
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, mesh=None, max_tokens: int | None = None, tokenizer: str | None = None,
                        **kwargs) -> "VideoChat":
        """Loads a VILA-layout checkpoint (``llm/`` with the tokenizer, ``vision_tower/``, ``mm_projector/``);
        ``tokenizer``: another tokenizer folder, or ``toy:llama3`` / ``toy:chatml``."""
        from longvila_jax.convert.cli_ops import checkpoint_dtype
        from longvila_jax.infer.tokenizer import load_tokenizer
        from longvila_jax.models.longvila import LongVILA

        root = Path(path)
        if not (root / "llm").is_dir() or not (root / "vision_tower").is_dir():
            raise InputError(f"--model {root}: not a LongVILA checkpoint folder (llm/, vision_tower/, mm_projector/)")
        tokenizer = load_tokenizer(root, tokenizer)
        dtype = dtype or checkpoint_dtype(root / "llm" / "config.json")
        model = LongVILA.from_pretrained(root, dtype=dtype)
        stop = stop_token_ids(tokenizer, root)
        return cls(model, tokenizer, mesh=mesh, max_tokens=max_tokens, stop_ids=stop, **kwargs)

    def budget(self, questions: Sequence[str], new_tokens: int) -> FrameBudget:
        """The frame budget of the longest of ``questions``."""
        newline = newline_tokens(self.tokenizer)
        image = self.model.config.image_token_id
        text = max(len(video_prompt_ids(self.tokenizer, q, 1, image, system=self.system)) - 1 - newline
                   for q in questions)
        return FrameBudget(self.max_tokens, text, self.model.config.tokens_per_frame + newline, new_tokens)

    def prompt_rows(self, questions: Sequence[str], num_frames: int) -> list[np.ndarray]:
        image = self.model.config.image_token_id
        return [video_prompt_ids(self.tokenizer, q, num_frames, image, system=self.system) for q in questions]

    def ask(self, video, prompt: str | Sequence[str], *, frames: int | None = None, fps: float = 1.0,
            max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            stream: bool | TextStream = False):
        """The answer (a string; a list for a list of prompts).  ``stream``: print row 0's text as it comes."""
        questions = [prompt] if isinstance(prompt, str) else list(prompt)
        if not questions or any(not q.strip() for q in questions):
            raise InputError("--prompt: give a non-empty question")
        info = probe_video(video)
        count = choose_frame_count(info, self.budget(questions, max_new_tokens), frames=frames, fps=fps)
        pixels = load_frames(info, count, self.model.config.vision.image_size, fps=None if frames else fps)
        visual = self.generator.encode(pixels)
        rows = self.prompt_rows(questions, count)
        visual = visual if len(rows) == 1 else jnp.concatenate([visual] * len(rows))
        callback = stream if isinstance(stream, TextStream) else (
            TextStream(self.tokenizer, self.stop_ids) if stream else None)
        out = self.generator.generate(rows, visual, max_new_tokens=max_new_tokens, temperature=temperature,
                                      top_p=top_p, seed=seed, stop_ids=self.stop_ids, on_tokens=callback)
        texts = [self.decode(tokens) for tokens in out.tokens]
        return texts[0] if isinstance(prompt, str) else texts

    def decode(self, tokens: Sequence[int]) -> str:
        """Generated ids -> text, stop and special tokens left out."""
        kept = [t for t in tokens if t not in self.stop_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()
