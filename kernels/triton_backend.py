"""The ``triton`` backend: :mod:`.triton_flash` kernels through ``jax_triton.triton_call``.

Valid on CUDA GPUs (Ampere and later) for bf16/fp16 and head_dim <= 128,
with every mask (segments, positions, Sq != Sk) and a given-lse backward.
Lengths are padded to a multiple of ``PAD`` with segment 0 (and sliced back).
Each kernel walks per-CTA visit lists built here in XLA (:func:`visit_lists`):
tiles the mask cannot reach are never visited, tiles it keeps whole skip the
elementwise mask. Forward: one kernel writes out and lse. Backward: delta =
rowsum(dout*out) - dlse in XLA, then a dK/dV kernel (per key block, looping over
query blocks and the GQA group) and a dQ kernel (per query block, looping over
key blocks): no atomics.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .mask import pad_tokens
from .mosaic_plan import tile_table
from .row_stats import backward_delta, lse_base2

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
AUTO_HEAD_DIMS = (64, 128)


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


PAD = 128  # lengths are padded to a multiple of this; every block must divide it


def visit_lists(q_seg, q_pos, kv_seg, kv_pos, *, causal: bool, tiles: Tiles, resident: str):
    """int32 ``[B, n_resident, 3 + n_streamed]`` (the layout :mod:`.triton_flash` reads).

    ``resident`` is ``"q"`` (forward, dQ: query blocks of ``block_m`` stream key blocks of
    ``block_n``) or ``"kv"`` (dK/dV). Per list: whole tiles, masked tiles, the resident
    block, then the visited streamed blocks, whole first, each group in increasing order.
    Lists come longest first, so the long tile loops start first and the short ones fill the
    end of the launch. Padded (complete) ids and positions.
    """
    table = tile_table(q_seg, q_pos, kv_seg, kv_pos, causal=causal, block_q=tiles.block_m,
                       block_k=tiles.block_n)
    visit, whole = table.visit, table.whole
    if resident == "kv":
        visit, whole = visit.transpose(0, 2, 1), whole.transpose(0, 2, 1)
    rank = jnp.where(whole, 0, jnp.where(visit, 1, 2))  # whole, then masked, then skipped
    order = jnp.argsort(rank, axis=-1, stable=True).astype(jnp.int32)
    n_whole = whole.sum(-1, dtype=jnp.int32)
    n_masked = visit.sum(-1, dtype=jnp.int32) - n_whole
    block = jnp.broadcast_to(jnp.arange(visit.shape[1], dtype=jnp.int32), n_whole.shape)
    lists = jnp.concatenate([n_whole[..., None], n_masked[..., None], block[..., None], order], axis=-1)
    longest_first = jnp.argsort(-(n_whole + n_masked), axis=-1, stable=True)
    return jnp.take_along_axis(lists, longest_first[..., None], axis=1)


MAX_GRID_Y = 65535  # CUDA's limit on the second grid axis, which counts resident blocks


def _check_tiles(*tiles: Tiles):
    for tile in tiles:
        for block in (tile.block_m, tile.block_n):
            if PAD % block or block < 16:
                raise ValueError(f"Triton tile {tile}: blocks must be powers of two in [16, {PAD}]")


def _pad_rows(x, length: int):
    """``[B, S, ...]`` -> ``[B, length, ...]`` with zeros."""
    extra = length - x.shape[1]
    return x if extra == 0 else jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))


def _padded_len(n: int) -> int:
    return -(-n // PAD) * PAD


def _constants(q, k, causal, scale, tiles: Tiles, lists):
    if lists.shape[1] > MAX_GRID_Y:
        raise ValueError(f"Triton: {lists.shape[1]} resident blocks of {tiles} exceed the grid's {MAX_GRID_Y}; "
                         f"use larger blocks (triton_backend.TILES) or shard the sequence")
    batch, q_len, q_heads, head_dim = q.shape
    return dict(SCALE=float(scale), CAUSAL=bool(causal), SQ=q_len, SK=k.shape[1], HQ=q_heads,
                HKV=k.shape[2], D=head_dim, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                BLOCK_D=_block_d(head_dim), LIST_WIDTH=lists.shape[-1])


def _padded_tokens(q_seg, kv_seg, q_pos, kv_pos):
    q_len, kv_len = _padded_len(q_seg.shape[1]), _padded_len(kv_seg.shape[1])
    q_seg, q_pos = pad_tokens(q_seg.astype(jnp.int32), q_pos.astype(jnp.int32), q_len)
    kv_seg, kv_pos = pad_tokens(kv_seg.astype(jnp.int32), kv_pos.astype(jnp.int32), kv_len)
    return q_seg, kv_seg, q_pos, kv_pos


def forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale, tiles: Tiles | None = None):
    """-> out ``[B, Sq, Hq, D]``, lse float32 ``[B, Hq, Sq]``."""
    from .triton_flash import flash_fwd_kernel

    tiles = tiles or TILES["forward"]
    _check_tiles(tiles)
    batch, q_len, q_heads, _ = q.shape
    q_seg, kv_seg, q_pos, kv_pos = _padded_tokens(q_seg, kv_seg, q_pos, kv_pos)
    qp, kp, vp = (_pad_rows(x, n) for x, n in ((q, q_seg.shape[1]), (k, kv_seg.shape[1]), (v, kv_seg.shape[1])))
    lists = visit_lists(q_seg, q_pos, kv_seg, kv_pos, causal=causal, tiles=tiles, resident="q")
    out, lse = _triton_call(
        qp, kp, vp, q_seg, q_pos, kv_seg, kv_pos, lists,
        kernel=flash_fwd_kernel, name="longvila_flash_fwd",
        out_type=(jax.ShapeDtypeStruct(qp.shape, q.dtype),
                  jax.ShapeDtypeStruct((batch, q_heads, qp.shape[1]), jnp.float32)),
        grid=(batch * q_heads, lists.shape[1]),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        **_constants(qp, kp, causal, scale, tiles, lists))
    return out[:, :q_len], lse[..., :q_len]


def backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *, causal, scale,
             dkdv_tiles: Tiles | None = None, dq_tiles: Tiles | None = None, delta=None):
    """``(dq, dk, dv)`` from out, lse ``[B, Hq, Sq]`` and cotangents dout, dlse (or None); ``delta``:
    rowsum(dout * out) - dlse when the caller computed it (``api.attention_delta``), else None."""
    from .triton_flash import flash_bwd_dkdv_kernel, flash_bwd_dq_kernel

    dkdv_tiles, dq_tiles = dkdv_tiles or TILES["dkdv"], dq_tiles or TILES["dq"]
    _check_tiles(dkdv_tiles, dq_tiles)
    batch, q_len, q_heads, _ = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    lse = lse.astype(jnp.float32)
    delta, lse2 = backward_delta(out, dout, lse, dlse, delta), lse_base2(lse)
    q_seg, kv_seg, q_pos, kv_pos = _padded_tokens(q_seg, kv_seg, q_pos, kv_pos)
    q_pad, kv_pad = q_seg.shape[1], kv_seg.shape[1]
    qp, dop = _pad_rows(q, q_pad), _pad_rows(dout.astype(q.dtype), q_pad)
    kp, vp = _pad_rows(k, kv_pad), _pad_rows(v, kv_pad)
    row_stats = [jnp.pad(x, ((0, 0), (0, 0), (0, q_pad - q_len)), constant_values=fill)
                 for x, fill in ((lse2, jnp.inf), (delta, 0.0))]
    tensors = (qp, kp, vp, dop, *row_stats, q_seg, q_pos, kv_seg, kv_pos)

    lists = visit_lists(q_seg, q_pos, kv_seg, kv_pos, causal=causal, tiles=dkdv_tiles, resident="kv")
    dk, dv = _triton_call(
        *tensors, lists,
        kernel=flash_bwd_dkdv_kernel, name="longvila_flash_bwd_dkdv",
        out_type=(jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)),
        grid=(batch * kv_heads, lists.shape[1]),
        num_warps=dkdv_tiles.num_warps, num_stages=dkdv_tiles.num_stages,
        **_constants(qp, kp, causal, scale, dkdv_tiles, lists))
    lists = visit_lists(q_seg, q_pos, kv_seg, kv_pos, causal=causal, tiles=dq_tiles, resident="q")
    dq = _triton_call(
        *tensors, lists,
        kernel=flash_bwd_dq_kernel, name="longvila_flash_bwd_dq",
        out_type=jax.ShapeDtypeStruct(qp.shape, q.dtype),
        grid=(batch * q_heads, lists.shape[1]),
        num_warps=dq_tiles.num_warps, num_stages=dq_tiles.num_stages,
        **_constants(qp, kp, causal, scale, dq_tiles, lists))
    return dq[:, :q_len], dk[:, :kv_len], dv[:, :kv_len]


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
                  call=None, delta=None, **unused):
    del call, unused
    return backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos,
                    causal=causal, scale=scale, delta=delta)
