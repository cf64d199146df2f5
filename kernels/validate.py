"""Argument checks with errors that name the argument and its shape."""

from __future__ import annotations

import jax.numpy as jnp


def _shape(x):
    return tuple(getattr(x, "shape", ()))


def check_qkv(q, k, v):
    """q ``[B, Sq, Hq, D]``, k/v ``[B, Sk, Hkv, D]``, one float dtype, Hq % Hkv == 0."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must have rank 4 [batch, seq, heads, head_dim], got shape {_shape(x)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got q {q.shape} and k {k.shape}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim, got q {q.shape} and k {k.shape}")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"query heads must be a multiple of kv heads, got q {q.shape} "
                         f"({q.shape[2]} heads) and k {k.shape} ({k.shape[2]} heads)")


def check_tokens(name: str, x, batch: int, length: int):
    """``x`` is None or an integer ``[batch, length]`` array."""
    if x is None:
        return
    if _shape(x) != (batch, length):
        raise ValueError(f"{name} must have shape {(batch, length)}, got {_shape(x)}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")


def check_like(name: str, x, shape, dtype=None):
    """``x`` has exactly ``shape`` (and ``dtype`` when given)."""
    if _shape(x) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {_shape(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {jnp.dtype(dtype)}, got {x.dtype}")
