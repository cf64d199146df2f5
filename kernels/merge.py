"""Log-sum-exp merge of two partial attention results (ring attention's step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Combine attention over two disjoint key sets into attention over their union.

    out ``[B, S, H, D]``, lse ``[B, H, S]`` (natural log, -inf where a part saw
    no key). Returns float32 ``(out, lse)``; rows where both parts are empty
    give out 0 and lse -inf, with finite (zero) gradients.
    """
    lse_a = lse_a.astype(jnp.float32)
    lse_b = lse_b.astype(jnp.float32)
    row_max = jnp.maximum(lse_a, lse_b)
    seen = row_max > -jnp.inf
    row_max = jax.lax.stop_gradient(jnp.where(seen, row_max, 0.0))
    weight_a = jnp.exp(lse_a - row_max)  # 0 where a part is empty
    weight_b = jnp.exp(lse_b - row_max)
    total = jnp.where(seen, weight_a + weight_b, 1.0)
    lse = jnp.where(seen, row_max + jnp.log(total), -jnp.inf)

    def per_token(w):  # [B, H, S] -> [B, S, H, 1]
        return jnp.swapaxes(w / total, 1, 2)[..., None]

    out = per_token(weight_a) * out_a.astype(jnp.float32) + per_token(weight_b) * out_b.astype(jnp.float32)
    return out, lse
