"""The cudnn backend's VJP plumbing on CPU, with cuDNN replaced by the reference.

cuDNN itself needs a GPU (tests/test_kernels_gpu.py); here we check what this
project adds around it: out-gradients go through cuDNN's VJP, lse-gradients
through the xla backward, and an unused lse costs nothing (symbolic zero).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import cudnn_backend, reference_attention
from longvila_jax.kernels.testing import random_qkv


@pytest.fixture
def fake_cudnn(monkeypatch):
    calls = {"xla_backward": 0}
    real_backward = cudnn_backend.flash_backward

    def counting_backward(*args, **kwargs):
        calls["xla_backward"] += 1
        return real_backward(*args, **kwargs)

    def reference_as_cudnn(q, k, v, causal, scale):
        out, lse = reference_attention(q, k, v, causal=causal, scale=scale)
        return out.astype(q.dtype), lse

    monkeypatch.setattr(cudnn_backend, "_cudnn_call", reference_as_cudnn)
    monkeypatch.setattr(cudnn_backend, "flash_backward", counting_backward)
    return calls


@pytest.mark.parametrize("use_lse", [False, True])
def test_gradients_of_out_and_lse(fake_cudnn, use_lse):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    q, k, v = random_qkv(rng, 1, 64, 64, 4, 2, 32)
    out_weight = rng.standard_normal(q.shape).astype(np.float32)
    lse_weight = rng.standard_normal((1, 4, 64)).astype(np.float32) if use_lse else 0.0

    def loss(attention):
        def f(q, k, v):
            out, lse = attention(q, k, v)
            value = jnp.sum(out * out_weight)
            return value + jnp.sum(lse * lse_weight) if use_lse else value
        return f

    backend = lambda q, k, v: cudnn_backend.attention(q, k, v, None, None, None, None,
                                                      causal=True, scale=32 ** -0.5)
    reference = lambda q, k, v: reference_attention(q, k, v, causal=True)
    grads = jax.grad(loss(backend), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for g, ref_g in zip(grads, ref_grads):
        assert np.linalg.norm(g - ref_g) / np.linalg.norm(ref_g) <= 1e-5
    assert fake_cudnn["xla_backward"] == (1 if use_lse else 0)
