"""Cross-entropy over the vocabulary in chunks: never a ``[tokens, vocab]`` array.

The LM head ``[embed, vocab]`` is cut into ``C``-column chunks; a ``lax.scan``
over the chunks keeps, per token, a running max ``m``, a running sum of
``exp(logit - m)`` and the target's logit, all float32 ``[B, S]``.  The scan
body is rematerialized, so the backward pass recomputes one ``[B, S, C]``
chunk of logits at a time instead of saving all of them.  A vocabulary that
does not divide by ``C`` is padded with zero columns whose logits are masked
to ``-inf``.

The loss of a step is the global token mean ``sum(loss) / count`` over the
tokens with ``loss_mask``; under ``jit`` with the tokens sharded over the
mesh, the sums below are global sums (XLA inserts the ``psum``).  Callers
that accumulate micro-batches add up ``(loss_sum, count)`` and divide once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def head_chunks(head: jax.Array, chunk: int) -> tuple[jax.Array, int]:
    """``[embed, vocab]`` -> ``([n, embed, chunk], vocab)`` with the vocabulary zero-padded to ``n * chunk``."""
    embed, vocab = head.shape
    chunk = min(chunk, vocab)
    num = -(-vocab // chunk)
    if num * chunk != vocab:
        head = jnp.pad(head, ((0, 0), (0, num * chunk - vocab)))
    return head.reshape(embed, num, chunk).transpose(1, 0, 2), vocab


def token_losses(hidden: jax.Array, head: jax.Array, targets: jax.Array, *, chunk: int = 8192,
                 dtype=None) -> jax.Array:
    """Per-token cross-entropy ``-log softmax(hidden @ head)[target]``, float32 ``[B, S]``.

    Args:
      hidden: final-norm hidden states ``[B, S, embed]`` (any token order).
      head: the LM head ``[embed, vocab]`` (the embedding table transposed when tied).
      targets: int ``[B, S]``, the next token of each position (from the data pipeline).
      chunk: vocabulary columns per chunk (``[B, S, chunk]`` float32 logits live at a time).
      dtype: matmul input dtype (default: ``hidden``'s); logits accumulate in float32.
    """
    if hidden.shape[:2] != targets.shape:
        raise ValueError(f"hidden {hidden.shape[:2]} and targets {targets.shape} must share [batch, seq]")
    dtype = dtype or hidden.dtype
    chunks, vocab = head_chunks(head.astype(dtype), chunk)
    width = chunks.shape[-1]
    hidden = hidden.astype(dtype)
    targets = targets.astype(jnp.int32)

    @jax.checkpoint
    def body(carry, xs):
        running_max, running_sum, target_logit = carry
        index, weights = xs
        logits = jnp.einsum("bsd,dc->bsc", hidden, weights, preferred_element_type=jnp.float32)
        column = index * width + jnp.arange(width, dtype=jnp.int32)
        logits = jnp.where(column < vocab, logits, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(logits - new_max[..., None]), axis=-1)
        hit = column == targets[..., None]
        target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
        return (new_max, running_sum, target_logit), None

    shape = targets.shape
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    (running_max, running_sum, target_logit), _ = jax.lax.scan(
        body, init, (jnp.arange(chunks.shape[0], dtype=jnp.int32), chunks))
    return running_max + jnp.log(running_sum) - target_logit


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
                          chunk: int = 8192, dtype=None) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over ``loss_mask`` (bool ``[B, S]``) and the number of loss tokens.

    Arguments as :func:`token_losses`.  Returns ``(loss_sum, count)``: float32
    scalars; the mean loss is ``loss_sum / count``.
    """
    if targets.shape != loss_mask.shape:
        raise ValueError(f"targets {targets.shape} and loss_mask {loss_mask.shape} must share [batch, seq]")
    per_token = token_losses(hidden, head, targets, chunk=chunk, dtype=dtype)
    mask = loss_mask.astype(bool)
    loss_sum = jnp.sum(jnp.where(mask, per_token, 0.0))
    return loss_sum, jnp.sum(mask).astype(jnp.float32)
