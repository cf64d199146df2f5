"""Next-token choice from float32 logits: greedy, temperature and nucleus (top-p) sampling.

One traced function serves every setting (no recompilation when the user
changes them): ``temperature <= 0`` is greedy (argmax); otherwise the logits
are divided by the temperature, tokens outside the smallest set whose
probability reaches ``top_p`` (the most likely token is always kept; ties at
the cut-off are kept) are masked, and a token is drawn with ``key``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_p_mask(logits: jax.Array, top_p) -> jax.Array:
    """Boolean ``[B, V]``: the tokens of the nucleus of mass ``top_p`` (ties at the cut-off included)."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return logits >= cutoff


def sample_tokens(logits: jax.Array, key: jax.Array, temperature, top_p) -> jax.Array:
    """``logits`` float32 ``[B, V]`` -> int32 ``[B]``; deterministic for a given ``key``."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temperature = jnp.asarray(temperature, jnp.float32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    masked = jnp.where(top_p_mask(scaled, jnp.asarray(top_p, jnp.float32)), scaled, -jnp.inf)
    sampled = jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)
