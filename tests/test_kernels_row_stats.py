"""The backward's row statistics (kernels/row_stats.py) against numpy in float64."""

import numpy as np

from longvila_jax.kernels.row_stats import lse_base2, softmax_delta


def test_softmax_delta_and_lse_base2_match_numpy():
    rng = np.random.default_rng()
    batch, seq, heads, dim = 2, 37, 3, 16
    out, dout = (rng.standard_normal((batch, seq, heads, dim)).astype(np.float32) for _ in range(2))
    lse = rng.standard_normal((batch, heads, seq)).astype(np.float32)
    dlse = rng.standard_normal((batch, heads, seq)).astype(np.float32)
    lse[0, 1, :5] = -np.inf  # rows that see no key: delta 0, lse2 +inf
    row_sum = np.einsum("bshd,bshd->bhs", dout.astype(np.float64), out.astype(np.float64))
    visible = np.isfinite(lse)

    np.testing.assert_allclose(np.asarray(softmax_delta(out, dout, lse, dlse)),
                               np.where(visible, row_sum - dlse, 0.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(softmax_delta(out, dout, lse, None)),
                               np.where(visible, row_sum, 0.0), rtol=1e-5, atol=1e-5)
    lse2 = np.asarray(lse_base2(lse))
    assert np.isposinf(lse2[~visible]).all()
    np.testing.assert_allclose(lse2[visible], lse[visible] / np.log(2.0), rtol=1e-6)
