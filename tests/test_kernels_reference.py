"""The dense reference itself against a plain numpy loop (float64): out, lse, and the gradients of
``reference_vjp`` against central finite differences of that loop."""

import numpy as np

from longvila_jax.kernels.reference import reference_vjp


def numpy_attention(q, k, v, seg, pos, causal, scale):
    """One query row at a time: softmax over the keys its sample (and causality) allows."""
    _, q_len, q_heads, _ = q.shape
    group = q_heads // k.shape[2]
    out, lse = np.zeros(q.shape), np.full((1, q_heads, q_len), -np.inf)
    for h in range(q_heads):
        for i in range(q_len):
            keys = [j for j in range(k.shape[1])
                    if seg[0, j] == seg[0, i] != 0 and (not causal or pos[0, j] <= pos[0, i])]
            if not keys:
                continue
            scores = np.array([q[0, i, h] @ k[0, j, h // group] for j in keys]) * scale
            weights = np.exp(scores - scores.max())
            out[0, i, h] = weights @ v[0, keys, h // group] / weights.sum()
            lse[0, h, i] = scores.max() + np.log(weights.sum())
    return out, lse


def test_reference_vjp_matches_a_numpy_loop_and_finite_differences(rng):
    length, q_heads, kv_heads, head_dim, scale = 6, 2, 1, 3, 0.7
    seg = np.array([[1, 1, 1, 2, 2, 0]], np.int32)  # two samples and a padding token
    pos = np.array([[0, 1, 2, 0, 1, 0]], np.int32)
    q = rng.standard_normal((1, length, q_heads, head_dim))
    k, v = (rng.standard_normal((1, length, kv_heads, head_dim)) for _ in range(2))
    dout = rng.standard_normal(q.shape)
    mask = dict(q_segment_ids=seg, kv_segment_ids=seg, q_positions=pos, kv_positions=pos, causal=True, scale=scale)
    out, lse, grads = reference_vjp(q, k, v, dout, **mask)
    want_out, want_lse = numpy_attention(q, k, v, seg, pos, True, scale)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)  # float32 against float64: lse may be near 0
    eps = 1e-5
    for arg, grad in enumerate(grads):
        tensors = [q, k, v]
        numeric = np.zeros(tensors[arg].shape)
        for index in np.ndindex(*numeric.shape):
            plus, minus = ([t.copy() for t in tensors] for _ in range(2))
            plus[arg][index] += eps
            minus[arg][index] -= eps
            numeric[index] = np.sum((numpy_attention(*plus, seg, pos, True, scale)[0]
                                     - numpy_attention(*minus, seg, pos, True, scale)[0]) * dout) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)
    assert not np.any(out[0, 5]) and np.all(np.isneginf(lse[0, :, 5]))  # the padding row sees nothing
