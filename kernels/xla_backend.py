"""The ``xla`` backend: :mod:`.xla_flash` behind a custom VJP. Runs on any device."""

from __future__ import annotations

import functools

import jax

from .xla_flash import flash_backward, flash_forward

NAME = "xla"
# Tile sizes; lengths that are not multiples are padded and masked.
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


def unsupported(call) -> str | None:
    """Every mask, dtype and head_dim works here."""
    del call
    return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale, block_q, block_k):
    return flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos,
                         causal=causal, scale=scale, block_q=block_q, block_k=block_k)


def _attention_fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale, block_q, block_k):
    out, lse = _attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale, block_q, block_k)
    return (out, lse), (q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse)


def _attention_bwd(causal, scale, block_q, block_k, residuals, cotangents):
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse = residuals
    dout, dlse = cotangents
    dq, dk, dv = flash_backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos,
                                causal=causal, scale=scale, block_q=block_q, block_k=block_k)
    return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, call=None,
              block_q=None, block_k=None):
    """Differentiable ``(out, lse)``; ids/positions are complete int32 arrays."""
    del call
    return _attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale,
                      block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K)


def attention_bwd(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *,
                  causal, scale, call=None, block_q=None, block_k=None, delta=None):
    """``(dq, dk, dv)`` from a given ``out``/``lse`` and cotangents ``dout``/``dlse`` (or a given
    ``delta``)."""
    del call
    return flash_backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos,
                          causal=causal, scale=scale, block_q=block_q or DEFAULT_BLOCK_Q,
                          block_k=block_k or DEFAULT_BLOCK_K, delta=delta)
