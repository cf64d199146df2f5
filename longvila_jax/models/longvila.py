"""LongVILA: SigLIP tower -> projector -> visual tokens spliced into the LLM sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longvila_jax.models.config import LongVILAConfig, RuntimeConfig
from longvila_jax.models.llm import Decoder
from longvila_jax.models.projector import Projector
from longvila_jax.models.siglip import SiglipVisionTower
from longvila_jax.models.splice import count_placeholders, splice_visual_tokens


def safe_token_ids(input_ids: jax.Array, vocab_size: int) -> jax.Array:
    """Ids outside ``[0, vocab)`` (placeholders such as -200) become 0 before any embedding lookup."""
    return jnp.where((input_ids >= 0) & (input_ids < vocab_size), input_ids, 0)


class LongVILA(nnx.Module):
    """``model(input_ids [B, S], pixel_values [N, H, W, 3]) -> logits [B, S - n + n*T, vocab]`` float32."""

    def __init__(self, config: LongVILAConfig, runtime: RuntimeConfig = RuntimeConfig(), *, rngs: nnx.Rngs):
        self.config, self.runtime = config, runtime
        self.vision_tower = SiglipVisionTower(config.vision, runtime, rngs)
        self.mm_projector = Projector(config.projector, runtime, rngs)
        self.llm = Decoder(config.llm, runtime, rngs)

    def encode_frames(self, pixel_values: jax.Array) -> jax.Array:
        """``[N, H, W, 3]`` normalized frames -> visual tokens ``[N, T, embed]``."""
        return self.mm_projector(self.vision_tower(pixel_values), self.config.vision.grid)

    def embed_inputs(self, input_ids: jax.Array, visual_tokens: jax.Array) -> jax.Array:
        """Text embeddings with each placeholder replaced by its frame's tokens: ``[B, S - n + n*T, embed]``."""
        text = self.llm.embed(safe_token_ids(input_ids, self.config.llm.vocab_size))
        return splice_visual_tokens(input_ids, text, visual_tokens, self.config.image_token_id)

    def __call__(self, input_ids, pixel_values, *, positions=None, segment_ids=None, mesh=None):
        """Logits ``[B, S, vocab]``; ``mesh``: sequence-parallel attention (see ``Decoder.hidden_states``)."""
        count_placeholders(input_ids, self.config.image_token_id, pixel_values.shape[0])
        embeds = self.embed_inputs(jnp.asarray(input_ids, jnp.int32), self.encode_frames(jnp.asarray(pixel_values)))
        hidden = self.llm.hidden_states(embeds, positions=positions, segment_ids=segment_ids, mesh=mesh)
        return self.llm.logits(hidden)

    @classmethod
    def from_pretrained(cls, path, dtype=jnp.float32, **runtime_options) -> "LongVILA":
        """Loads a VILA-layout directory (``llm/``, ``vision_tower/``, ``mm_projector/``, ``config.json``)."""
        from longvila_jax.convert.vila import load_longvila
        return load_longvila(path, RuntimeConfig(dtype=dtype, param_dtype=runtime_options.pop("param_dtype", dtype),
                                                 **runtime_options))

    def save_pretrained(self, path) -> None:
        """Writes the VILA layout with the source checkpoint's configs and tensor dtypes."""
        from longvila_jax.convert.vila import save_longvila
        save_longvila(self, path)
