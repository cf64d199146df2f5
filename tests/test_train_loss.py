"""Chunked cross-entropy against a dense float64 reference (value and gradients), and its memory shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.train.loss import chunked_cross_entropy


def dense_reference(hidden, head, targets, mask):
    """Per-token -log softmax(h @ W)[target], summed over the mask, in float64 NumPy."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    return float(-(picked * mask).sum()), float(mask.sum())


@pytest.mark.parametrize("vocab,chunk", [(96, 32), (100, 32), (64, 128)])
def test_chunked_loss_matches_dense(rng, vocab, chunk):
    batch, seq, embed = 2, 12, 16
    hidden = rng.standard_normal((batch, seq, embed)).astype(np.float32)
    head = rng.standard_normal((embed, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    mask = rng.random((batch, seq)) < 0.6
    mask[0, 0] = True
    loss_sum, count = chunked_cross_entropy(jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(targets),
                                            jnp.asarray(mask), chunk=chunk)
    want_sum, want_count = dense_reference(hidden, head, targets, mask)
    assert float(count) == want_count
    np.testing.assert_allclose(float(loss_sum), want_sum, rtol=1e-5)


def test_chunked_loss_gradients_match_dense(rng):
    batch, seq, embed, vocab = 2, 10, 8, 70
    hidden = jnp.asarray(rng.standard_normal((batch, seq, embed)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((embed, vocab)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32)
    mask = jnp.asarray(rng.random((batch, seq)) < 0.7)

    def chunked(h, w):
        s, c = chunked_cross_entropy(h, w, targets, mask, chunk=16)
        return s / c

    def dense(h, w):
        logp = jax.nn.log_softmax(h @ w, axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(mask, picked, 0.0)) / jnp.sum(mask)

    got = jax.grad(chunked, argnums=(0, 1))(hidden, head)
    want = jax.grad(dense, argnums=(0, 1))(hidden, head)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=1e-6)


def test_no_full_vocab_logits_in_program(rng):
    """The compiled forward+backward holds [B, S, chunk] logits, never [B, S, vocab]."""
    batch, seq, embed, vocab, chunk = 1, 64, 8, 4096, 256
    hidden = jnp.zeros((batch, seq, embed))
    head = jnp.zeros((embed, vocab))
    targets = jnp.zeros((batch, seq), jnp.int32)
    mask = jnp.ones((batch, seq), bool)
    fn = jax.jit(jax.grad(lambda h, w: chunked_cross_entropy(h, w, targets, mask, chunk=chunk)[0], argnums=(0, 1)))
    text = fn.lower(hidden, head).compile().as_text()
    assert f"f32[{batch},{seq},{chunk}]" in text
    assert f"f32[{batch},{seq},{vocab}]" not in text and f"f32[{seq},{vocab}]" not in text


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="share"):
        chunked_cross_entropy(jnp.zeros((1, 4, 8)), jnp.zeros((8, 16)), jnp.zeros((1, 5), jnp.int32),
                              jnp.ones((1, 5), bool))
