"""The ``cudnn`` backend: cuDNN fused attention, where its masks suffice.

Valid on GPU for bf16/fp16, head_dim a multiple of 8 up to 128 (256 on
Hopper is left to ``auto``'s caution), no segment ids, and either the full
mask or plain causal with default positions and Sq == Sk. ``lse`` comes from
cuDNN's own softmax statistics (float32 ``[B, Hq, Sq]``, natural log),
through JAX's private ``jax._src.cudnn.fused_attention_stablehlo``
because the public ``jax.nn.dot_product_attention(return_residual=True)``
casts them to the output dtype. cuDNN's backward ignores the lse cotangent,
so when a caller differentiates lse we add that term with the xla backward
(ds = p * dlse); symbolic zeros make it free when lse is unused.
cuDNN cannot take a given (ring-merged) lse: no ``attention_bwd``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .mask import default_positions, default_segment_ids
from .xla_flash import flash_backward

NAME = "cudnn"
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def unsupported(call) -> str | None:
    """Why cuDNN cannot serve ``call`` (None when it can)."""
    if call.platform != "gpu":
        return f"needs a GPU, running on {call.platform}"
    if call.given_lse:
        return "cuDNN's backward cannot take a given out/lse"
    if jnp.dtype(call.dtype) not in _DTYPES:
        return f"needs bfloat16 or float16, got {call.dtype}"
    if call.head_dim % 8 or call.head_dim > 128:
        return f"needs head_dim a multiple of 8 and at most 128, got {call.head_dim}"
    if call.has_segments:
        return "no segment ids (packed samples) in cuDNN through JAX"
    if call.causal and call.has_positions:
        return "causal with explicit positions (cuDNN knows only i >= j)"
    if call.causal and call.q_len != call.kv_len:
        return f"causal needs Sq == Sk, got {call.q_len} and {call.kv_len}"
    return None


def _cudnn_call(q, k, v, causal, scale):
    """-> out ``[B, Sq, Hq, D]``, lse float32 ``[B, Hq, Sq]``."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn  # private, see module doc

    mask_type = cudnn.MaskType.CAUSAL if causal else cudnn.MaskType.NO_MASK
    out, lse = cudnn.dot_product_attention(q, k, v, scale=scale, mask_type=mask_type,
                                           qkv_layout="BTNH", return_residual=True)
    return out, lse.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, causal, scale):
    return _cudnn_call(q, k, v, causal, scale)


def _attention_fwd(q, k, v, causal, scale):
    q, k, v = q.value, k.value, v.value
    (out, lse), cudnn_vjp = jax.vjp(lambda *a: _cudnn_call(*a, causal, scale), q, k, v)
    return (out, lse), (q, k, v, out, lse, cudnn_vjp)


def _attention_bwd(causal, scale, residuals, cotangents):
    q, k, v, out, lse, cudnn_vjp = residuals
    dout, dlse = cotangents
    if isinstance(dout, SymbolicZero):
        dout = jnp.zeros(out.shape, out.dtype)
    dq, dk, dv = cudnn_vjp((dout, jnp.zeros_like(lse)))
    if not isinstance(dlse, SymbolicZero):  # d lse / d s = p: the xla backward adds it
        batch, q_len, kv_len = q.shape[0], q.shape[1], k.shape[1]
        extra = flash_backward(
            q, k, v, jnp.zeros_like(out), lse, jnp.zeros_like(out), dlse,
            default_segment_ids(batch, q_len), default_segment_ids(batch, kv_len),
            default_positions(batch, q_len), default_positions(batch, kv_len),
            causal=causal, scale=scale, block_q=512, block_k=512)
        dq, dk, dv = (a + b.astype(a.dtype) for a, b in zip((dq, dk, dv), extra))
    return dq, dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, call=None, **unused):
    """Differentiable ``(out, lse)``; ids/positions are ignored (see :func:`unsupported`)."""
    del q_seg, kv_seg, q_pos, kv_pos, call, unused
    return _attention(q, k, v, causal, scale)


def attention_bwd(*args, **kwargs):
    raise ValueError("impl='cudnn' cannot compute gradients from a given out/lse; use 'xla' or 'auto'")
