"""Parameter-holding primitives: Dense, Embed, RMSNorm, LayerNorm.

Every parameter carries ``logical_axes`` metadata; ``longvila_jax.sharding``
maps those names to mesh axes.  Parameters are stored in ``param_dtype`` and
cast to the compute ``dtype`` at use.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs | None, shape, logical_axes, dtype, init: str = "normal", stddev: float = 0.02) -> nnx.Param:
    """A parameter of ``shape`` named by ``logical_axes`` (one name per dimension)."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"shape {shape} and logical axes {logical_axes} differ in rank")
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = (stddev * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(logical_axes))


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel ``[in, out]``."""

    def __init__(self, in_features: int, out_features: int, axes: tuple[str, str], *, use_bias: bool,
                 dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.kernel = param(rngs, (in_features, out_features), axes, param_dtype)
        self.bias = param(rngs, (out_features,), axes[1:], param_dtype, init="zeros") if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table ``[vocab, embed]``; ``attend`` gives tied logits."""

    def __init__(self, vocab: int, features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.embedding = param(rngs, (vocab, features), ("vocab", "embed"), param_dtype)
        self.dtype = dtype

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], token_ids, axis=0).astype(self.dtype)

    def attend(self, hidden: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), self.embedding[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 and cast back to the compute dtype."""

    def __init__(self, features: int, *, eps: float, dtype: Any, param_dtype: Any):
        self.scale = param(None, (features,), ("norm",), param_dtype, init="ones")
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * normed).astype(self.dtype)


class LayerNorm(nnx.Module):
    """(x - mean) / std * scale + bias, in float32."""

    def __init__(self, features: int, *, eps: float, dtype: Any, param_dtype: Any, axis_name: str = "norm"):
        self.scale = param(None, (features,), (axis_name,), param_dtype, init="ones")
        self.bias = param(None, (features,), (axis_name,), param_dtype, init="zeros")
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)
