"""Blockwise (flash) attention in plain JAX: the ``xla`` backend.

Forward: a sequential loop over query blocks; for each, a loop over only the
key blocks that :func:`block_visit_mask` keeps (any batch row), with an online
softmax in float32. Backward: a loop over key blocks; for each, a loop over
the query blocks that see it, accumulating dk/dv for the block and dq for the
whole sequence (float32, linear in S). No ``[Sq, Sk]`` array is ever built;
a tile is ``[B, Hkv, G, block_q, block_k]``.

Layout: q ``[B, Sq, Hq, D]``, k/v ``[B, Sk, Hkv, D]``, lse ``[B, Hq, Sq]``.
GQA: query head h reads kv head ``h // G`` with ``G = Hq // Hkv``; inside a
tile the query heads are viewed as ``[Hkv, G]``. Lengths are padded up to a
multiple of the block with segment 0 (masked) and cropped at the end.
All arguments here are complete (ids and positions are arrays, scale a float);
:mod:`.api` fills the defaults.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .block_skip import block_visit_mask
from .mask import pad_tokens, visible
from .row_stats import backward_delta


def _pad_seq(x, length: int, value=0):
    """Pad axis 1 of ``x`` to ``length``."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _pad_last(x, length: int, value=0):
    """Pad the last axis of ``x`` to ``length``."""
    extra = length - x.shape[-1]
    if extra == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, extra)]
    return jnp.pad(x, widths, constant_values=value)


def _visit_order(visit):
    """From a boolean ``[n_outer, n_inner]`` visit table, per outer block: the
    inner block indices visited first (int32 ``[n_outer, n_inner]``) and how
    many are visited (int32 ``[n_outer]``)."""
    order = jnp.argsort(jnp.logical_not(visit), axis=1, stable=True).astype(jnp.int32)
    return order, visit.sum(axis=1, dtype=jnp.int32)


class _Tiles:
    """Padded inputs and the block geometry shared by forward and backward."""

    def __init__(self, q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal, block_q, block_k):
        batch, q_len, q_heads, head_dim = q.shape
        kv_len, kv_heads = k.shape[1], k.shape[2]
        self.block_q = min(block_q, q_len)
        self.block_k = min(block_k, kv_len)
        self.n_q = -(-q_len // self.block_q)
        self.n_k = -(-kv_len // self.block_k)
        self.q_len, self.kv_len = q_len, kv_len
        self.q_len_pad = self.n_q * self.block_q
        self.kv_len_pad = self.n_k * self.block_k
        self.batch, self.q_heads, self.kv_heads, self.head_dim = batch, q_heads, kv_heads, head_dim
        self.group = q_heads // kv_heads
        self.causal = causal
        self.q = _pad_seq(q, self.q_len_pad)
        self.k = _pad_seq(k, self.kv_len_pad)
        self.v = _pad_seq(v, self.kv_len_pad)
        self.q_seg, self.q_pos = pad_tokens(q_seg, q_pos, self.q_len_pad)
        self.kv_seg, self.kv_pos = pad_tokens(kv_seg, kv_pos, self.kv_len_pad)
        self.visit = block_visit_mask(
            self.q_seg, self.q_pos, self.kv_seg, self.kv_pos,
            causal=causal, block_q=self.block_q, block_k=self.block_k).any(axis=0)

    def q_block(self, x, i):
        """Rows ``[i*block_q, (i+1)*block_q)`` of axis 1."""
        return lax.dynamic_slice_in_dim(x, i * self.block_q, self.block_q, axis=1)

    def kv_block(self, x, j):
        return lax.dynamic_slice_in_dim(x, j * self.block_k, self.block_k, axis=1)

    def grouped(self, x_block):
        """``[B, b, Hq, D]`` -> ``[B, b, Hkv, G, D]``."""
        b = x_block.shape[1]
        return x_block.reshape(self.batch, b, self.kv_heads, self.group, x_block.shape[-1])

    def tile_mask(self, i, j):
        """Boolean ``[B, 1, 1, block_q, block_k]`` for tile (i, j)."""
        mask = visible(self.q_block(self.q_seg, i), self.q_block(self.q_pos, i),
                       self.kv_block(self.kv_seg, j), self.kv_block(self.kv_pos, j),
                       causal=self.causal)
        return mask[:, None, None]


def _scores(q_grouped, k_block, scale):
    """q ``[B, bq, Hkv, G, D]``, k ``[B, bk, Hkv, D]`` -> float32 ``[B, Hkv, G, bq, bk]``."""
    s = jnp.einsum("bqhgd,bkhd->bhgqk", q_grouped, k_block, preferred_element_type=jnp.float32)
    return s * scale


def flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, causal: bool, scale: float,
                  block_q: int, block_k: int):
    """-> out ``[B, Sq, Hq, D]`` (q's dtype), lse float32 ``[B, Hq, Sq]`` (-inf on empty rows)."""
    t = _Tiles(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal=causal, block_q=block_q, block_k=block_k)
    kv_order, kv_count = _visit_order(t.visit)
    pv_dtype = v.dtype  # p is cast to the input dtype for the matmul, accumulated in f32
    row_shape = (t.batch, t.kv_heads, t.group, t.block_q)

    def one_q_block(args):
        i, order, count = args
        q_grouped = t.grouped(t.q_block(t.q, i))

        def visit_kv_block(step, carry):
            row_max, row_sum, acc = carry
            j = order[step]
            s = _scores(q_grouped, t.kv_block(t.k, j), scale)
            s = jnp.where(t.tile_mask(i, j), s, -jnp.inf)
            new_max = jnp.maximum(row_max, s.max(-1))
            safe_max = jnp.where(new_max == -jnp.inf, 0.0, new_max)
            p = jnp.exp(s - safe_max[..., None])
            rescale = jnp.exp(row_max - safe_max)
            row_sum = rescale * row_sum + p.sum(-1)
            pv = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(pv_dtype), t.kv_block(t.v, j),
                            preferred_element_type=jnp.float32)
            return new_max, row_sum, rescale[..., None] * acc + pv

        init = (jnp.full(row_shape, -jnp.inf, jnp.float32), jnp.zeros(row_shape, jnp.float32),
                jnp.zeros(row_shape + (t.head_dim,), jnp.float32))
        row_max, row_sum, acc = lax.fori_loop(0, count, visit_kv_block, init)
        seen = row_sum > 0
        out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
        lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
        # [B, Hkv, G, bq, D] -> [B, bq, Hq, D]; lse -> [B, Hq, bq]
        out = jnp.moveaxis(out, 3, 1).reshape(t.batch, t.block_q, t.q_heads, t.head_dim)
        return out.astype(q.dtype), lse.reshape(t.batch, t.q_heads, t.block_q)

    blocks = (jnp.arange(t.n_q, dtype=jnp.int32), kv_order, kv_count)
    out_blocks, lse_blocks = lax.map(one_q_block, blocks)
    # out_blocks [n_q, B, bq, Hq, D], lse_blocks [n_q, B, Hq, bq]
    out = jnp.moveaxis(out_blocks, 0, 1).reshape(t.batch, t.q_len_pad, t.q_heads, t.head_dim)
    lse = jnp.moveaxis(lse_blocks, 0, 2).reshape(t.batch, t.q_heads, t.q_len_pad)
    return out[:, :t.q_len], lse[..., :t.q_len]


def flash_backward(q, k, v, out, lse, dout, dlse, q_seg, kv_seg, q_pos, kv_pos, *,
                   causal: bool, scale: float, block_q: int, block_k: int, delta=None):
    """Gradients of ``(out, lse)`` w.r.t. q, k, v, given ``out``, ``lse`` and their
    cotangents ``dout`` ``[B, Sq, Hq, D]`` and ``dlse`` float32 ``[B, Hq, Sq]`` (or None);
    ``delta``: rowsum(dout * out) - dlse when the caller computed it, else None.

    p = exp(s - lse) on visible entries of rows with finite lse, else 0;
    ds = p * (dout . v - rowsum(dout * out) + dlse). Returns dq, dk, dv in the
    dtypes of q, k, v; dk/dv summed over the G query heads of each kv head.
    """
    t = _Tiles(q, k, v, q_seg, kv_seg, q_pos, kv_pos, causal=causal, block_q=block_q, block_k=block_k)
    q_order, q_count = _visit_order(t.visit.T)
    mm_dtype = q.dtype  # p and ds are cast to the input dtype for the matmuls

    finite = jnp.isfinite(lse)
    delta = backward_delta(out, dout, lse, dlse, delta)
    lse_safe = jnp.where(finite, lse, jnp.inf)  # exp(s - inf) = 0 on empty rows
    grouped_rows = (t.batch, t.kv_heads, t.group)
    delta = _pad_last(delta, t.q_len_pad).reshape(*grouped_rows, t.q_len_pad)
    lse_safe = _pad_last(lse_safe, t.q_len_pad, jnp.inf).reshape(*grouped_rows, t.q_len_pad)
    dout_pad = _pad_seq(dout, t.q_len_pad)

    def q_rows(x, i):
        return lax.dynamic_slice_in_dim(x, i * t.block_q, t.block_q, axis=3)

    def one_kv_block(dq, args):
        j, order, count = args
        k_block, v_block = t.kv_block(t.k, j), t.kv_block(t.v, j)

        def visit_q_block(step, carry):
            dq, dk_block, dv_block = carry
            i = order[step]
            q_grouped = t.grouped(t.q_block(t.q, i))
            dout_grouped = t.grouped(t.q_block(dout_pad, i))
            s = _scores(q_grouped, k_block, scale)
            keep = t.tile_mask(i, j)
            p = jnp.where(keep, jnp.exp(s - q_rows(lse_safe, i)[..., None]), 0.0)
            dv_block += jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(mm_dtype), dout_grouped,
                                   preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhgd,bkhd->bhgqk", dout_grouped, v_block,
                            preferred_element_type=jnp.float32)
            ds = (p * (dp - q_rows(delta, i)[..., None]) * scale).astype(mm_dtype)
            dk_block += jnp.einsum("bhgqk,bqhgd->bkhd", ds, q_grouped,
                                   preferred_element_type=jnp.float32)
            dq_grouped = jnp.einsum("bhgqk,bkhd->bqhgd", ds, k_block,
                                    preferred_element_type=jnp.float32)
            dq_old = t.q_block(dq, i)
            dq_new = dq_old + dq_grouped.reshape(dq_old.shape)
            dq = lax.dynamic_update_slice_in_dim(dq, dq_new, i * t.block_q, axis=1)
            return dq, dk_block, dv_block

        zeros_kv = jnp.zeros((t.batch, t.block_k, t.kv_heads, t.head_dim), jnp.float32)
        dq, dk_block, dv_block = lax.fori_loop(0, count, visit_q_block, (dq, zeros_kv, zeros_kv))
        return dq, (dk_block, dv_block)

    dq0 = jnp.zeros((t.batch, t.q_len_pad, t.q_heads, t.head_dim), jnp.float32)
    blocks = (jnp.arange(t.n_k, dtype=jnp.int32), q_order, q_count)
    dq, (dk_blocks, dv_blocks) = lax.scan(one_kv_block, dq0, blocks)

    def unblock(x):  # [n_k, B, bk, Hkv, D] -> [B, Sk, Hkv, D]
        x = jnp.moveaxis(x, 0, 1).reshape(t.batch, t.kv_len_pad, t.kv_heads, t.head_dim)
        return x[:, :t.kv_len]

    return (dq[:, :t.q_len].astype(q.dtype), unblock(dk_blocks).astype(k.dtype),
            unblock(dv_blocks).astype(v.dtype))
