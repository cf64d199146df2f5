"""Dense float32 attention: the reference every test compares against.

Written directly from the mask contract (plain softmax over a dense, masked
``[B, Hq, Sq, Sk]`` score matrix; K/V heads repeated for GQA); it shares no
code with the kernels. Differentiable, with finite zero gradients on rows
that see no key. Only for small test sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reference_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None,
                        q_positions=None, kv_positions=None, causal=True, scale=None):
    """q ``[B, Sq, Hq, D]``, k/v ``[B, Sk, Hkv, D]``, ids/positions int ``[B, Sq]``/``[B, Sk]``.

    Returns out float32 ``[B, Sq, Hq, D]`` (0 on rows that see no key) and
    lse float32 ``[B, Hq, Sq]`` in natural log (-inf on those rows).
    """
    batch, q_len, q_heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((batch, q_len), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((batch, kv_len), jnp.int32)
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(q_len), (batch, q_len))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(kv_len), (batch, kv_len))
    if scale is None:
        scale = 1.0 / head_dim ** 0.5

    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    k32 = jnp.repeat(k32, q_heads // kv_heads, axis=2)
    v32 = jnp.repeat(v32, q_heads // kv_heads, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q32, k32, precision=jax.lax.Precision.HIGHEST) * scale

    allowed = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    allowed = allowed & (q_segment_ids[:, :, None] != 0)
    if causal:
        allowed = allowed & (kv_positions[:, None, :] <= q_positions[:, :, None])
    allowed = allowed[:, None]  # [B, 1, Sq, Sk]

    row_any = allowed.any(-1)  # [B, 1, Sq]
    masked = jnp.where(allowed, scores, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.where(row_any, masked.max(-1), 0.0))
    weights = jnp.where(allowed, jnp.exp(masked - row_max[..., None]), 0.0)
    row_sum = jnp.where(row_any, weights.sum(-1), 1.0)
    probs = weights / row_sum[..., None]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v32, precision=jax.lax.Precision.HIGHEST)
    lse = jnp.where(row_any, row_max + jnp.log(row_sum), -jnp.inf)
    return out, lse


def reference_vjp(q, k, v, dout, **mask):
    """``reference_attention`` in float32 and its gradients for the cotangent ``dout`` of out:
    ``(out, lse, (dq, dk, dv))``; ``mask``: its keyword arguments."""
    qkv32 = [x.astype(jnp.float32) for x in (q, k, v)]
    out, vjp, lse = jax.vjp(lambda *qkv: reference_attention(*qkv, **mask), *qkv32, has_aux=True)
    return out, lse, vjp(dout.astype(jnp.float32))
