"""Flax NNX modules: the LLM decoder, the SigLIP tower, projectors and the LongVILA wrapper."""

from longvila_jax.models.causal_lm import CausalLM
from longvila_jax.models.config import LLMConfig, LongVILAConfig, ProjectorConfig, RuntimeConfig, VisionConfig
from longvila_jax.models.longvila import LongVILA

__all__ = ["CausalLM", "LongVILA", "LLMConfig", "VisionConfig", "ProjectorConfig", "LongVILAConfig", "RuntimeConfig"]
