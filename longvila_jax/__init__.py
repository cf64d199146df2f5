"""longvila-jax: LongVILA long-context video language models in JAX."""

from longvila_jax.models import CausalLM, LongVILA

__all__ = ["CausalLM", "LongVILA"]
__version__ = "0.1.0"
