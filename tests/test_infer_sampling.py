"""Token choice: greedy, temperature, top-p (hand-computed nuclei), determinism for a key."""

import jax
import jax.numpy as jnp
import numpy as np

from longvila_jax.infer.sampling import sample_tokens, top_p_mask


def test_top_p_mask_hand_computed():
    # probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled vocabulary order)
    probs = np.array([[0.15, 0.5, 0.05, 0.3]])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    # mass before each token, in sorted order: 0, 0.5, 0.8, 0.95
    assert np.asarray(top_p_mask(logits, 0.5)).tolist() == [[False, True, False, False]]
    assert np.asarray(top_p_mask(logits, 0.51)).tolist() == [[False, True, False, True]]
    assert np.asarray(top_p_mask(logits, 0.9)).tolist() == [[True, True, False, True]]
    assert np.asarray(top_p_mask(logits, 1.0)).tolist() == [[True, True, True, True]]
    assert np.asarray(top_p_mask(logits, 1e-6)).tolist() == [[False, True, False, False]]  # the top token stays


def test_greedy_is_argmax_and_sampling_is_deterministic(rng):
    logits = jnp.asarray(rng.standard_normal((3, 50)), jnp.float32)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    greedy = sample_tokens(logits, key, 0.0, 1.0)
    assert np.asarray(greedy).tolist() == np.argmax(np.asarray(logits), axis=-1).tolist()
    a = sample_tokens(logits, key, 1.0, 0.9)
    b = sample_tokens(logits, key, 1.0, 0.9)
    assert np.asarray(a).tolist() == np.asarray(b).tolist()


def test_sampling_frequencies_follow_the_nucleus(rng):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    perm = rng.permutation(4)
    logits = jnp.asarray(np.log(probs[perm])[None].repeat(4000, 0), jnp.float32)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    drawn = np.asarray(sample_tokens(logits, key, 1.0, 0.7))  # nucleus {0.5, 0.3}: renormalized 0.625, 0.375
    counts = np.bincount(perm[drawn], minlength=4) / drawn.size
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] - 0.625) < 0.04 and abs(counts[1] - 0.375) < 0.04
    # temperature 2 flattens p ∝ p^(1/2) over all four tokens (top_p = 1)
    drawn = np.asarray(sample_tokens(logits, key, 2.0, 1.0))
    counts = np.bincount(perm[drawn], minlength=4) / drawn.size
    flat = np.sqrt(probs) / np.sqrt(probs).sum()
    assert np.all(np.abs(counts - flat) < 0.04)
