"""The ``triton`` backend: :mod:`.triton_flash` kernels through ``jax_triton.triton_call``.

Valid on CUDA GPUs (Ampere and later) for bf16/fp16 and head_dim <= 128,
with every mask (segments, positions, Sq != Sk) and a given-lse backward.
Forward: one kernel writes out and lse. Backward: delta = rowsum(dout*out) - dlse
in XLA, then a dK/dV kernel (per key block, looping over query blocks and the
GQA group) and a dQ kernel (per query block, looping over key blocks): no
atomics. Tiles whose block ranges cannot meet are skipped inside the kernels.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .block_skip import block_ranges

NAME = "triton"
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _triton_call(*args, out_type, **kwargs):
    """``jax_triton.triton_call``: the output keyword is ``out_type`` from 0.4, ``out_shape`` before."""
    import inspect

    import jax_triton as jt

    keyword = "out_type" if "out_type" in inspect.signature(jt.triton_call).parameters else "out_shape"
    return jt.triton_call(*args, **{keyword: out_type}, **kwargs)


class Tiles(NamedTuple):
    """Tile sizes and launch options of one kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# The largest tiles that compile without register spills for D = 128, bf16, on both
# sm_80 and sm_90 (ptxas resource usage, see NOTES.md); the bench can override them.
TILES = {
    "forward": Tiles(64, 64, 4, 3),
    "dkdv": Tiles(32, 64, 4, 3),
    "dq": Tiles(64, 64, 4, 3),
}


# Head dims checked against the reference on a GPU (tests/test_kernels_gpu.py, BENCHMARKS.md); ``auto``
# picks Triton only for these, an explicit impl="triton" serves any head_dim <= 128.
AUTO_HEAD_DIMS = (128,)


def _import_error() -> str | None:
    try:
        import jax_triton  # noqa: F401
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        return f"jax_triton is not importable ({e}); pip install 'longvila-jax[gpu]'"
    return None


def unsupported(call) -> str | None:
    if call.platform != "gpu":
        return f"needs a CUDA GPU, running on {call.platform}"
    if jnp.dtype(call.dtype) not in _DTYPES:
        return f"needs bfloat16 or float16, got {call.dtype}"
    if call.head_dim > 128:
        return f"head_dim at most 128, got {call.head_dim}"
    return _import_error()


def _block_d(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def _ranges(q_seg, q_pos, kv_seg, kv_pos, tiles: Tiles):
    """The six int32 ``[B, n_blocks]`` range arrays the kernels read."""
    q = block_ranges(q_seg, q_pos, tiles.block_m)
    kv = block_ranges(kv_seg, kv_pos, tiles.block_n)
    return (q.segment_min, q.segment_max, q.position_max,
            kv.segment_min, kv.segment_max, kv.position_min)


def _constants(q, k, causal, scale, tiles: Tiles):
    batch, q_len, q_heads, head_dim = q.shape
    return dict(SCALE=float(scale), CAUSAL=bool(causal), SQ=q_len, SK=k.shape[1], HQ=q_heads,
                HKV=k.shape[2], D=head_dim, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                BLOCK_D=_block_d(head_dim))


def _cdiv(a, b):
    return -(-a // b)


def softmax_delta(out, dout, lse, dlse):
    """float32 ``[B, Hq, Sq]``: rowsum(dout * out) - dlse, 0 on rows with lse = -inf."""
    delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))
    if dlse is not None:
        delta = delta - dlse.astype(jnp.float32)
    return jnp.where(jnp.isfinite(lse), delta, 0.0)


def forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, tiles: Tiles | None = None):
    """-> out ``[B, Sq, Hq, D]``, lse float32 ``[B, Hq, Sq]``."""
    import jax_triton as jt

    from .triton_flash import flash_fwd_kernel

    tiles = tiles or TILES["forward"]
    batch, q_len, q_heads, _ = q.shape
    return _triton_call(
        q, k, v, q_seg, q_pos, kv_seg, kv_pos, *_ranges(q_seg, q_pos, kv_seg, kv_pos, tiles),
        kernel=flash_fwd_kernel, name="longvila_flash_fwd",
        out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((batch, q_heads, q_len), jnp.float32)),
        grid=(_cdiv(q_len, tiles.block_m), batch * q_heads),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        **_constants(q, k, causal, scale, tiles))


def backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale,
             dkdv_tiles: Tiles | None = None, dq_tiles: Tiles | None = None):
    """``(dq, dk, dv)`` from out, lse ``[B, Hq, Sq]`` and cotangents dout, dlse (or None)."""
    import jax_triton as jt

    from .triton_flash import flash_bwd_dkdv_kernel, flash_bwd_dq_kernel

    dkdv_tiles, dq_tiles = dkdv_tiles or TILES["dkdv"], dq_tiles or TILES["dq"]
    batch, q_len, q_heads, _ = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    lse = lse.astype(jnp.float32)
    delta = softmax_delta(out, dout, lse, dlse)
    tensors = (q, k, v, dout.astype(q.dtype), lse, delta, q_seg, q_pos, kv_seg, kv_pos)

    dk, dv = _triton_call(
        *tensors, *_ranges(q_seg, q_pos, kv_seg, kv_pos, dkdv_tiles),
        kernel=flash_bwd_dkdv_kernel, name="longvila_flash_bwd_dkdv",
        out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=(_cdiv(kv_len, dkdv_tiles.block_n), batch * kv_heads),
        num_warps=dkdv_tiles.num_warps, num_stages=dkdv_tiles.num_stages,
        **_constants(q, k, causal, scale, dkdv_tiles))
    dq = _triton_call(
        *tensors, *_ranges(q_seg, q_pos, kv_seg, kv_pos, dq_tiles),
        kernel=flash_bwd_dq_kernel, name="longvila_flash_bwd_dq",
        out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(_cdiv(q_len, dq_tiles.block_m), batch * q_heads),
        num_warps=dq_tiles.num_warps, num_stages=dq_tiles.num_stages,
        **_constants(q, k, causal, scale, dq_tiles))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale):
    return forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal=causal, scale=scale)


def _attention_fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale):
    out, lse = forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal=causal, scale=scale)
    return (out, lse), (q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse)


def _attention_bwd(causal, scale, residuals, cotangents):
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse = residuals
    dout, dlse = cotangents
    dq, dk, dv = backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos,
                          causal=causal, scale=scale)
    return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, call=None, **unused):
    """Differentiable ``(out, lse)``; ids/positions complete int32 arrays."""
    del call, unused
    return _attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal, scale)


def attention_bwd(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale,
                  call=None, **unused):
    del call, unused
    return backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos,
                    causal=causal, scale=scale)
