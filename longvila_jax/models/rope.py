"""Rotary position embedding (half-rotation layout of Llama and Qwen2), RoPE from explicit positions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, rope: dict) -> np.ndarray:
    """``[head_dim // 2]`` float32 inverse frequencies, with Llama-3 or linear scaling applied."""
    theta = float(rope["rope_theta"])
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    inv_freq = (1.0 / (theta ** exponents)).astype(np.float32)
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        return (inv_freq / float(rope["factor"])).astype(np.float32)
    if kind != "llama3":
        return inv_freq
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    original = float(rope["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    long_waves = wavelength > original / low
    short_waves = wavelength < original / high
    scaled = np.where(long_waves, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    return np.where(~long_waves & ~short_waves, blended, scaled).astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin ``[B, S, head_dim]`` float32 for integer ``positions`` ``[B, S]``."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` ``[B, S, H, head_dim]`` by the tables ``[B, S, head_dim]``; math in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
