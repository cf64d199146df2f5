"""Backend choice and argument errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvila_jax.kernels import attention_delta, dispatch, flash_attention, flash_attention_bwd

Q = jnp.zeros((1, 16, 4, 8), jnp.float32)
KV = jnp.zeros((1, 24, 2, 8), jnp.float32)

GPU_CALL = dispatch.AttentionCall(
    platform="gpu", dtype=np.dtype(jnp.bfloat16), head_dim=128, q_len=1024, kv_len=1024,
    q_heads=32, kv_heads=8, causal=True, has_segments=False, has_positions=False, given_lse=False)


def test_auto_is_xla_on_cpu():
    call = dataclasses.replace(GPU_CALL, platform="cpu")
    assert dispatch.choose("auto", call) is dispatch.BACKENDS["xla"]


@pytest.fixture(params=[True, False], ids=["with-jax-triton", "without-jax-triton"])
def triton_importable(request, monkeypatch):
    """Runs a test as if jax_triton were (or were not) installed."""
    error = None if request.param else "jax_triton is not importable"
    monkeypatch.setattr(dispatch.triton_backend, "_import_error", lambda: error)
    return request.param


def test_auto_on_gpu_prefers_cudnn_then_triton_then_xla(triton_importable):
    assert dispatch.choose("auto", GPU_CALL).NAME == "cudnn"
    siglip = dataclasses.replace(GPU_CALL, head_dim=72, causal=False, q_heads=16, kv_heads=16)
    assert dispatch.choose("auto", siglip).NAME == "cudnn"
    assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, causal=False, has_positions=True)).NAME == "cudnn"
    fallback = "triton" if triton_importable else "xla"
    for change in (dict(has_segments=True), dict(has_positions=True), dict(kv_len=512), dict(given_lse=True)):
        assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, **change)).NAME == fallback, change
    # D = 64 was checked on a GPU (BENCHMARKS run M); head dims Triton serves but no GPU run has
    # checked: auto leaves them to xla, an explicit impl may use them
    assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, head_dim=64, has_segments=True)).NAME == fallback
    if triton_importable:
        assert dispatch.choose("triton", dataclasses.replace(GPU_CALL, head_dim=72, has_segments=True)).NAME == "triton"
    for change in (dict(head_dim=68), dict(head_dim=72, has_segments=True), dict(dtype=np.dtype(np.float32)),
                   dict(head_dim=256)):
        assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, **change)).NAME == "xla", change


def test_auto_on_hopper_prefers_cudnn_then_mosaic(monkeypatch):
    monkeypatch.setattr(dispatch.mosaic_backend, "_is_hopper", lambda: True)
    assert dispatch.choose("auto", GPU_CALL).NAME == "cudnn"  # a plain mask at 1k tokens: cuDNN
    for change in (dict(has_segments=True), dict(has_positions=True), dict(kv_len=512), dict(given_lse=True),
                   dict(has_segments=True, head_dim=64, dtype=np.dtype(np.float16))):
        assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, **change)).NAME == "mosaic", change
    siglip = dataclasses.replace(GPU_CALL, head_dim=72, causal=False, q_heads=16, kv_heads=16)
    assert dispatch.choose("auto", siglip).NAME == "cudnn"
    assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, head_dim=72, has_segments=True)).NAME != "mosaic"
    with pytest.raises(ValueError, match="head_dim must be one of"):
        dispatch.choose("mosaic", dataclasses.replace(GPU_CALL, head_dim=96))
    monkeypatch.setattr(dispatch.mosaic_backend, "_is_hopper", lambda: False)  # Ampere: Triton serves
    with pytest.raises(ValueError, match="compute capability 9"):
        dispatch.choose("mosaic", GPU_CALL)


def test_auto_on_hopper_takes_mosaic_for_plain_causal_lengths_it_measured_faster(monkeypatch):
    """2k to 16k tokens, causal, D = 128: mosaic before cuDNN; the edges, the full mask, D = 64 and a
    GPU that is not Hopper keep cuDNN."""
    monkeypatch.setattr(dispatch.mosaic_backend, "_is_hopper", lambda: True)
    for length in (2048, 4096, 8192, 12288, 16383):
        call = dataclasses.replace(GPU_CALL, q_len=length, kv_len=length)
        assert dispatch.choose("auto", call).NAME == "mosaic", length
        assert dispatch.preference(call)[:2] == ("mosaic", "cudnn")
    for length in (2047, 16384, 32768):
        assert dispatch.choose("auto", dataclasses.replace(GPU_CALL, q_len=length, kv_len=length)).NAME == "cudnn"
    long_call = dataclasses.replace(GPU_CALL, q_len=8192, kv_len=8192)
    for change in (dict(causal=False), dict(head_dim=64), dict(dtype=np.dtype(np.float16), head_dim=64)):
        assert dispatch.choose("auto", dataclasses.replace(long_call, **change)).NAME == "cudnn", change
    assert dispatch.preference(dataclasses.replace(long_call, platform="cpu")) == ("xla",)
    monkeypatch.setattr(dispatch.mosaic_backend, "_is_hopper", lambda: False)
    assert dispatch.choose("auto", long_call).NAME == "cudnn"


def test_cudnn_explicitly_on_an_invalid_mask_says_why():
    with pytest.raises(ValueError, match="segment ids"):
        dispatch.choose("cudnn", dataclasses.replace(GPU_CALL, has_segments=True))
    with pytest.raises(ValueError, match="needs a GPU"):
        flash_attention(Q, KV, KV, impl="cudnn", causal=False)


def test_triton_on_cpu_says_why():
    with pytest.raises(ValueError, match="impl='triton' cannot serve this call: needs a CUDA GPU"):
        flash_attention(Q, KV, KV, impl="triton")


def test_mosaic_off_hopper_says_why():
    with pytest.raises(ValueError, match="impl='mosaic' cannot serve this call: needs a Hopper GPU"):
        flash_attention(Q, KV, KV, impl="mosaic")
    with pytest.raises(ValueError, match="impl='mosaic' cannot serve this call: needs a Hopper GPU"):
        flash_attention_bwd(Q, KV, KV, Q, jnp.zeros((1, 4, 16)), Q, impl="mosaic")
    call = dataclasses.replace(GPU_CALL, head_dim=72)
    assert "head_dim must be one of (64, 128), got 72" in dispatch.BACKENDS["mosaic"].unsupported(call)
    mosaic = dispatch.BACKENDS["mosaic"]
    call = dataclasses.replace(GPU_CALL, head_dim=128, q_len=4096, kv_len=mosaic.MAX_KV_LEN + 128)
    assert f"at most {mosaic.MAX_Q_LEN} queries and {mosaic.MAX_KV_LEN} keys per call" in mosaic.unsupported(call)
    assert "impl='triton'" in mosaic.unsupported(call)
    call = dataclasses.replace(GPU_CALL, head_dim=128, q_len=mosaic.MAX_Q_LEN + 1, kv_len=4096)
    assert f"got {mosaic.MAX_Q_LEN + 1} and 4096" in mosaic.unsupported(call)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl must be"):
        flash_attention(Q, KV, KV, impl="flash3")


@pytest.mark.parametrize("args,error,pattern", [
    ((Q[0], KV, KV), ValueError, r"q must have rank 4.*\(16, 4, 8\)"),
    ((Q, KV, KV[:, :20]), ValueError, r"k and v must have the same shape"),
    ((Q, KV.astype(jnp.bfloat16), KV.astype(jnp.bfloat16)), TypeError, "one dtype"),
    ((Q, jnp.zeros((1, 24, 3, 8)), jnp.zeros((1, 24, 3, 8))), ValueError, r"multiple of kv heads.*\(1, 24, 3, 8\)"),
    ((Q, jnp.zeros((2, 24, 2, 8)), jnp.zeros((2, 24, 2, 8))), ValueError, "batch size"),
    ((Q, jnp.zeros((1, 24, 2, 16)), jnp.zeros((1, 24, 2, 16))), ValueError, "head_dim"),
    ((Q.astype(jnp.int32), KV, KV), TypeError, "floating point"),
])
def test_bad_qkv(args, error, pattern):
    with pytest.raises(error, match=pattern):
        flash_attention(*args)


def test_bad_ids_and_positions():
    with pytest.raises(ValueError, match=r"kv_segment_ids must have shape \(1, 24\), got \(1, 16\)"):
        flash_attention(Q, KV, KV, kv_segment_ids=jnp.ones((1, 16), jnp.int32))
    with pytest.raises(TypeError, match="q_positions must be an integer array"):
        flash_attention(Q, KV, KV, q_positions=jnp.zeros((1, 16), jnp.float32))


def test_bad_bwd_arguments():
    lse = jnp.zeros((1, 4, 16))
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 4, 16\), got \(1, 16, 4\)"):
        flash_attention_bwd(Q, KV, KV, Q, jnp.zeros((1, 16, 4)), Q)
    with pytest.raises(ValueError, match="dout must have shape"):
        flash_attention_bwd(Q, KV, KV, Q, lse, Q[:, :8])
    with pytest.raises(ValueError, match=r"delta must have shape \(1, 4, 16\), got \(1, 16\)"):
        flash_attention_bwd(Q, KV, KV, Q, lse, Q, delta=lse[:, 0])
    with pytest.raises(ValueError, match="pass dlse or delta, not both"):
        flash_attention_bwd(Q, KV, KV, Q, lse, Q, dlse=lse, delta=lse)
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 4, 16\)"):
        attention_delta(Q, Q, lse[:, :2])


def test_works_under_jit_vmap_free_defaults():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    q = jnp.asarray(rng.standard_normal(Q.shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(KV.shape), jnp.float32)
    out, lse = jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=False))(q, k, k)
    assert out.shape == Q.shape and lse.shape == (1, 4, 16)
    assert np.isfinite(np.asarray(lse)).all()
