"""Generation: KV-cache decoding with sequence-parallel prefill.

``Generator`` (token-level: prompt rows with image placeholders, frames or
visual tokens, any mesh) and ``VideoChat`` (a checkpoint, its tokenizer and a
video file; behind ``longvila-jax generate``).  One idea per module:
``layout`` (host-side padding, masks, balanced order), ``placement`` (where
arrays live on the mesh), ``steps`` (the jitted encode / prefill / decode),
``sampling``, ``generate``, ``prompt`` (chat template, stop ids),
``tokenizer``, ``media`` and ``budget`` (frames that fit), ``stream``.
"""

from longvila_jax.infer.errors import InputError
from longvila_jax.infer.generate import Generation, Generator
from longvila_jax.infer.video_chat import VideoChat

__all__ = ["Generator", "Generation", "VideoChat", "InputError"]
