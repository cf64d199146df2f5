"""Public entry points: check arguments, fill defaults, dispatch.

Shapes: q ``[B, Sq, Hq, D]``; k, v ``[B, Sk, Hkv, D]`` with ``Hq % Hkv == 0``
(GQA: query head h uses kv head ``h // (Hq // Hkv)``, K/V never repeated);
segment ids and positions int ``[B, Sq]`` / ``[B, Sk]``; out like q;
lse float32 ``[B, Hq, Sq]`` in natural log.
Mask: query i sees key j iff ``q_segment_ids[i] == kv_segment_ids[j] != 0``
and, when causal, ``kv_positions[j] <= q_positions[i]``. None segment ids =
all ones; None positions = ``arange``. Rows that see no key: out 0,
lse -inf, zero gradients.
"""

from __future__ import annotations

import jax.numpy as jnp

from . import dispatch, trace_time
from .mask import default_positions, default_segment_ids
from .row_stats import softmax_delta
from .validate import check_like, check_qkv, check_tokens


def _prepare(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal, scale,
             given_lse):
    """Validate, describe the call, and complete ids/positions (int32) and scale."""
    check_qkv(q, k, v)
    batch, q_len, q_heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    check_tokens("q_segment_ids", q_segment_ids, batch, q_len)
    check_tokens("kv_segment_ids", kv_segment_ids, batch, kv_len)
    check_tokens("q_positions", q_positions, batch, q_len)
    check_tokens("kv_positions", kv_positions, batch, kv_len)
    call = dispatch.AttentionCall(
        platform=dispatch.current_platform(), dtype=jnp.dtype(q.dtype), head_dim=head_dim,
        q_len=q_len, kv_len=kv_len, q_heads=q_heads, kv_heads=kv_heads, causal=bool(causal),
        has_segments=q_segment_ids is not None or kv_segment_ids is not None,
        has_positions=q_positions is not None or kv_positions is not None,
        given_lse=given_lse)

    def complete(x, default, length):
        if x is not None:
            return jnp.asarray(x, jnp.int32)
        with trace_time.evaluation(not trace_time.in_manual_context()):  # concrete under jit: backends may
            return default(batch, length)                                 # plan with them while tracing

    tokens = (complete(q_segment_ids, default_segment_ids, q_len),
              complete(kv_segment_ids, default_segment_ids, kv_len),
              complete(q_positions, default_positions, q_len),
              complete(kv_positions, default_positions, kv_len))
    scale = float(1.0 / head_dim ** 0.5 if scale is None else scale)
    return call, tokens, scale


def flash_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None,
                    kv_positions=None, causal: bool = True, scale: float | None = None,
                    impl: str = "auto", block_q: int | None = None, block_k: int | None = None):
    """Attention ``(out [B, Sq, Hq, D], lse float32 [B, Hq, Sq])``, differentiable in q, k, v
    (and through lse). ``scale`` defaults to ``1/sqrt(D)``. ``impl``: 'auto', 'xla',
    'cudnn', 'triton', 'mosaic' (see :mod:`.dispatch`). ``block_q``/``block_k``
    tune the xla tiles (any positive size; tails are masked).
    """
    call, tokens, scale = _prepare(q, k, v, q_segment_ids, kv_segment_ids, q_positions,
                                   kv_positions, causal, scale, given_lse=False)
    backend = dispatch.choose(impl, call)
    return backend.attention(q, k, v, *tokens, causal=bool(causal), scale=scale, call=call,
                             block_q=block_q, block_k=block_k)


def flash_attention_bwd(q, k, v, out, lse, dout, *, dlse=None, delta=None, q_segment_ids=None,
                        kv_segment_ids=None, q_positions=None, kv_positions=None,
                        causal: bool = True, scale: float | None = None, impl: str = "auto",
                        block_q: int | None = None, block_k: int | None = None):
    """``(dq, dk, dv)`` of attention given its (e.g. ring-merged) ``out`` ``[B, Sq, Hq, D]``
    and ``lse`` float32 ``[B, Hq, Sq]``, the cotangent ``dout`` (like out) and optionally
    ``dlse`` (like lse). Standard flash backward: p = exp(s - lse),
    ds = p * (dout . v - delta) with delta = rowsum(dout * out) - dlse; rows with lse = -inf add
    nothing. ``delta`` (float32 like lse, from :func:`attention_delta`): given, the backward does not
    compute it (nor read out for it), so several calls on the same query rows (a ring's steps) share one
    row sum; ``dlse`` then belongs inside it. dq/dk/dv have the shapes and dtypes of q/k/v (dk, dv summed
    over each GQA group).
    """
    call, tokens, scale = _prepare(q, k, v, q_segment_ids, kv_segment_ids, q_positions,
                                   kv_positions, causal, scale, given_lse=True)
    batch, q_len, q_heads, _ = q.shape
    check_like("out", out, q.shape)
    check_like("dout", dout, q.shape)
    check_like("lse", lse, (batch, q_heads, q_len))
    if dlse is not None:
        check_like("dlse", dlse, (batch, q_heads, q_len))
    if delta is not None:
        check_like("delta", delta, (batch, q_heads, q_len))
        if dlse is not None:
            raise ValueError("pass dlse or delta, not both: a given delta already holds -dlse "
                             "(attention_delta(out, dout, lse, dlse=dlse))")
    backend = dispatch.choose(impl, call)
    return backend.attention_bwd(q, k, v, out, jnp.asarray(lse, jnp.float32), dout, dlse, *tokens,
                                 causal=bool(causal), scale=scale, call=call,
                                 block_q=block_q, block_k=block_k, delta=delta)


def attention_delta(out, dout, lse, *, dlse=None):
    """float32 ``[B, Hq, Sq]``: the backward's per-row ``delta = rowsum(dout * out) - dlse`` (0 on rows
    with lse = -inf) of ``out``, ``dout`` ``[B, Sq, Hq, D]``, ``lse`` (and ``dlse``) ``[B, Hq, Sq]``: compute
    it once and give it to every :func:`flash_attention_bwd` call on the same query rows (``delta=``)."""
    if getattr(out, "ndim", None) != 4:
        raise ValueError(f"out must have rank 4 [batch, seq, heads, head_dim], got shape {getattr(out, 'shape', ())}")
    batch, q_len, q_heads, _ = out.shape
    check_like("dout", dout, out.shape)
    check_like("lse", lse, (batch, q_heads, q_len))
    if dlse is not None:
        check_like("dlse", dlse, (batch, q_heads, q_len))
    return softmax_delta(out, dout, jnp.asarray(lse, jnp.float32), dlse)
