"""CausalLM: a plain Hugging Face Llama or Qwen2 decoder, for LLM-only work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longvila_jax.models.config import RuntimeConfig
from longvila_jax.models.llm import Decoder


class CausalLM(Decoder):
    """``lm(input_ids [B, S]) -> logits [B, S, vocab]`` float32."""

    def __call__(self, input_ids, *, positions=None, segment_ids=None):
        if not isinstance(input_ids, jax.core.Tracer):
            ids = np.asarray(input_ids)
            bad = (ids < 0) | (ids >= self.config.vocab_size)
            if bad.any():
                raise ValueError(
                    f"input_ids hold {int(bad.sum())} ids outside the vocabulary [0, {self.config.vocab_size}), "
                    f"e.g. {int(ids[bad][0])}; image placeholders need LongVILA, not CausalLM"
                )
        return super().__call__(jnp.asarray(input_ids, jnp.int32), positions=positions, segment_ids=segment_ids)

    @classmethod
    def from_pretrained(cls, path, dtype=jnp.float32, **runtime_options) -> "CausalLM":
        """Loads a Hugging Face Llama or Qwen2 folder (``config.json`` + safetensors)."""
        from longvila_jax.convert.hf_llm import load_causal_lm
        return load_causal_lm(path, RuntimeConfig(dtype=dtype, param_dtype=runtime_options.pop("param_dtype", dtype),
                                                  **runtime_options))

    def save_pretrained(self, path) -> None:
        from longvila_jax.convert.hf_llm import save_causal_lm
        save_causal_lm(self, path)
